//! The planted-secrets corpus (issue 11, item 7), the scanner's cases, a property
//! test over random JSON trees, and the volume-side comparison.

use super::*;
use proptest::prelude::*;

fn write(path: &Path, text: &str) {
    std::fs::create_dir_all(path.parent().unwrap()).unwrap();
    std::fs::write(path, text).unwrap();
}

/// Every planted secret: a distinct string that must appear in no planned byte, no
/// withheld path, JSON path or reason, and no rendered output.
const S: &[&str] = &[
    "ghp_PLANTEDmcpArgsToken000000000001", // 0 MCP args after --token
    "Zq8vT3kL9pX2mN7rB4wY6cJ1hF5dG0sA",    // 1 MCP --api-key=<random>
    "PLANTED-mcp-env-token-0002",          // 2 MCP env GITHUB_TOKEN
    "PLANTEDurlPassword0003",              // 3 URL userinfo password
    "PLANTEDqueryApiKey0004",              // 4 ?api_key=
    "PLANTEDbearerHeader0005",             // 5 headers Authorization
    "PLANTED-oauth-client-secret-0006",    // 6 oauth.clientSecret
    "PLANTED-headers-helper-0007",         // 7 headersHelper
    "xoxb-PLANTED-slack-0008",             // 8 MCP args slack token
    "AKIAPLANTED000000009",                // 9 MCP args AWS key id
    "PLANTED-account-uuid-0010",           // 10 .claude.json oauthAccount
    "PLANTED-user-id-0011",                // 11 .claude.json userID
    "sk-ant-api03-PLANTEDprimaryKey0012",  // 12 .claude.json primaryApiKey
    "PLANTED-project-mcp-env-0013",        // 13 project-scoped MCP env
    "sk-ant-oat01-PLANTEDaccessToken0014", // 14 .credentials.json
    "sk-ant-ort01-PLANTEDrefreshToken0015", // 15 .credentials.json
    "PLANTED-openai-apikey-0016",          // 16 env OPENAI_APIKEY
    "PLANTED-github-pat-0017",             // 17 env GITHUB_PAT
    "PLANTEDdbPassword0018",               // 18 env DATABASE_URL password
    "sk-ant-api03-PLANTEDcustomHeaders0019", // 19 env ANTHROPIC_CUSTOM_HEADERS
    "PLANTEDproxyPassword0020",            // 20 env HTTPS_PROXY
    "PLANTED-otel-header-0021",            // 21 env OTEL_EXPORTER_OTLP_HEADERS
    "PLANTED-otel-headers-helper-0022",    // 22 otelHeadersHelper
    "PLANTED-api-key-helper-0023",         // 23 apiKeyHelper
    "PLANTED-aws-auth-refresh-0024",       // 24 awsAuthRefresh
    "PLANTED-aws-credential-export-0025",  // 25 awsCredentialExport
    "PLANTEDhookBearer0026",               // 26 hook command Bearer
    "PLANTEDhookQueryToken0027",           // 27 hook command ?token=
    "sk-ant-api03-PLANTEDstatusLine0028",  // 28 statusLine command
    "sk-ant-api03-PLANTEDsettingsEnv0029", // 29 env ANTHROPIC_API_KEY
    "PLANTED-aws-secret-access-key-0030",  // 30 settings.local env
    "PLANTEDpermissionPassword0031",       // 31 permissions.allow URL userinfo
    "PLANTED-plugin-dotenv-0032",          // 32 plugin .env
    "PLANTED-plugin-mcp-env-0033",         // 33 plugin .mcp.json env
    "PLANTED-plugin-mcp-header-0034",      // 34 plugin .mcp.json headers
    "ghp_PLANTEDgitCredentials00000035",   // 35 marketplace .git-credentials
    "PLANTEDgitConfigToken0036",           // 36 marketplace .git/config
    "PLANTED-ssh-private-key-0037",        // 37 ~/.ssh/id_ed25519 via skills/
    "PLANTED-skill-yaml-api-key-0038",     // 38 skill config.yaml api_key
    "ghp_PLANTEDcommandBody0000000039",    // 39 a command's text
    "PLANTED-history-0040",                // 40 history.jsonl
    "PLANTED-transcript-0041",             // 41 projects/
    "PLANTED-todo-0042",                   // 42 todos/
    "PLANTED-statsig-0043",                // 43 statsig/
    "PLANTED-top-dotenv-0044",             // 44 ~/.claude/.env
    "PLANTED-netrc-0045",                  // 45 ~/.claude/.netrc
    "PLANTED-credentials-json-0046",       // 46 plugins/.../credentials.json
    "PLANTED-pem-in-skill-0047",           // 47 PEM block in a skill file
    "PLANTEDpluginHookToken0048",          // 48 plugin hooks.json command
    "0123456789abcdef0123456789abcdef",    // 49 SENTRY_DSN key (userinfo)
    "sk-ant-api03-PLANTEDescaped0050",     // 50 \u-escaped in JSON
    "sk-ant-api03-PLANTEDduplicate0051",   // 51 duplicate key, first copy
    "PLANTED-aws-credentials-0052",        // 52 ~/.aws/credentials via plugins/
    "PLANTED-inside-link-0053",            // 53 .credentials.json via agents/ link
    "PLANTED-local-md-0054",               // 54 .claude.json via commands/ link
];

/// A fake HOME with `~/.claude`, `~/.claude.json`, `~/.ssh` and `~/.aws`.
fn planted_home() -> tempfile::TempDir {
    let home = tempfile::tempdir().unwrap();
    let h = home.path();
    let c = h.join(".claude");
    // The user's own secrets outside the config dir.
    write(
        &h.join(".ssh/id_ed25519"),
        &format!(
            "-----BEGIN OPENSSH PRIVATE KEY-----\n{}\n-----END OPENSSH PRIVATE KEY-----\n",
            S[37]
        ),
    );
    write(
        &h.join(".aws/credentials"),
        &format!("[default]\naws_secret_access_key = {}\n", S[52]),
    );
    write(
        &h.join(".claude.json"),
        &json!({
            "userID": S[11],
            "oauthAccount": {"accountUuid": S[10], "emailAddress": "a@example.com"},
            "primaryApiKey": S[12],
            "projects": {"/home/a/p": {"mcpServers": {"p": {"command": "p", "env": {"X": S[13]}}}}},
            "mcpServers": {
                "github": {
                    "command": "github-mcp",
                    "args": ["stdio", "--token", S[0], format!("--api-key={}", S[1])],
                    "env": {"GITHUB_TOKEN": S[2], "LOG_LEVEL": "debug"},
                },
                "tools": {
                    "command": "npx",
                    "args": ["-y", "@example/tools-mcp", S[8], S[9]],
                },
                "remote": {
                    "type": "http",
                    "url": format!("https://bot:{}@mcp.example.com/mcp", S[3]),
                    "headers": {"Authorization": format!("Bearer {}", S[5])},
                    "headersHelper": format!("/usr/local/bin/{}", S[7]),
                },
                "query": {"type": "sse", "url": format!("https://sse.example.com/sse?api_key={}", S[4])},
                "oauthed": {
                    "type": "http",
                    "url": "https://oauth.example.com/mcp",
                    "oauth": {"clientId": "public-client", "clientSecret": S[6]},
                },
            },
        })
        .to_string(),
    );
    write(
        &c.join(".credentials.json"),
        &json!({"claudeAiOauth": {"accessToken": S[14], "refreshToken": S[15]}}).to_string(),
    );
    // settings.json is written by hand: an escaped key and a duplicate key.
    let settings = json!({
        "model": "opus",
        "apiKeyHelper": format!("echo {}", S[23]),
        "awsAuthRefresh": format!("aws sso login {}", S[24]),
        "awsCredentialExport": format!("/bin/{}", S[25]),
        "otelHeadersHelper": format!("/opt/{}.sh", S[22]),
        "env": {
            "OPENAI_APIKEY": S[16],
            "GITHUB_PAT": S[17],
            "DATABASE_URL": format!("postgres://app:{}@db.internal:5432/app", S[18]),
            "ANTHROPIC_CUSTOM_HEADERS": format!("x-api-key: {}", S[19]),
            "HTTPS_PROXY": format!("http://me:{}@proxy.internal:8080", S[20]),
            "OTEL_EXPORTER_OTLP_HEADERS": format!("Authorization=Bearer {}", S[21]),
            "ANTHROPIC_API_KEY": S[29],
            "SENTRY_URL": format!("https://{}@o1.ingest.sentry.io/1", S[49]),
            "BASH_DEFAULT_TIMEOUT_MS": "60000",
            "MAX_THINKING_TOKENS": "8000",
        },
        "permissions": {"allow": [
            "Bash(ls:*)",
            format!("Bash(curl https://admin:{}@api.example.com)", S[31]),
        ]},
        "hooks": {
            "PreToolUse": [{"matcher": "Bash", "hooks": [
                {"type": "command", "command": "~/.claude/hooks/guard.sh"},
                {"type": "command", "command": format!("curl -H 'Authorization: Bearer {}' https://hooks.example.com", S[26])},
            ]}],
            "PostToolUse": [{"matcher": "*", "hooks": [
                {"type": "command", "command": format!("curl https://hooks.example.com/n?token={}", S[27])},
            ]}],
        },
        "statusLine": {"type": "command", "command": format!("API_KEY={} ~/bin/status", S[28])},
    })
    .to_string();
    let settings = settings.strip_suffix('}').unwrap().to_string()
        + &format!(
            ",\"note\":\"\\u0073{}\",\"theme\":\"{}\",\"theme\":\"dark\"}}",
            &S[50][1..],
            S[51]
        );
    write(&c.join("settings.json"), &settings);
    write(
        &c.join("settings.local.json"),
        &json!({"env": {"AWS_SECRET_ACCESS_KEY": S[30], "EDITOR": "vim"}}).to_string(),
    );
    // Harmless things that must be synced.
    write(&c.join("CLAUDE.md"), "Be brief. Prefer small commits.\n");
    write(&c.join("commands/review.md"), "Review the diff for bugs.\n");
    write(&c.join("agents/tester.md"), "You write tests.\n");
    write(
        &c.join("skills/fmt/SKILL.md"),
        "---\nname: fmt\n---\nRun the formatter.\n",
    );
    // Secrets in files that are not JSON.
    write(
        &c.join("commands/deploy.md"),
        &format!("Push with the token {} to origin.\n", S[39]),
    );
    write(
        &c.join("skills/deploy/config.yaml"),
        &format!(
            "endpoint: https://deploy.example.com\napi_key: \"{}\"\n",
            S[38]
        ),
    );
    write(
        &c.join("skills/deploy/signing.txt"),
        &format!(
            "-----BEGIN RSA PRIVATE KEY-----\n{}\n-----END RSA PRIVATE KEY-----\n",
            S[47]
        ),
    );
    // Symlinks: out of the config dir, and inside it to what is never synced.
    std::os::unix::fs::symlink(h.join(".ssh"), c.join("skills/ssh")).unwrap();
    std::os::unix::fs::symlink(h.join(".ssh/id_ed25519"), c.join("agents/key.md")).unwrap();
    std::os::unix::fs::symlink(c.join(".credentials.json"), c.join("agents/creds.md")).unwrap();
    write(&c.join("local.json"), &json!({"x": S[54]}).to_string());
    std::os::unix::fs::symlink(c.join("local.json"), c.join("commands/local.md")).unwrap();
    let _ = S[53];
    // Plugins: a marketplace clone and an installed plugin.
    let mkt = c.join("plugins/marketplaces/acme");
    write(
        &mkt.join(".git-credentials"),
        &format!("https://user:{}@github.com\n", S[35]),
    );
    write(
        &mkt.join(".git/config"),
        &format!(
            "[remote \"origin\"]\n\turl = https://x-access-token:{}@github.com/acme/m.git\n",
            S[36]
        ),
    );
    write(
        &mkt.join(".claude-plugin/marketplace.json"),
        r#"{"name":"acme","plugins":[{"name":"demo","source":"./demo"}]}"#,
    );
    let plugin = c.join("plugins/cache/acme/demo/1.0.0");
    write(
        &plugin.join(".claude-plugin/plugin.json"),
        r#"{"name":"demo","version":"1.0.0"}"#,
    );
    write(&plugin.join(".env"), &format!("API_KEY={}\n", S[32]));
    write(
        &plugin.join(".mcp.json"),
        &json!({"mcpServers": {"demo": {
            "command": "${CLAUDE_PLUGIN_ROOT}/bin/demo-mcp",
            "env": {"DEMO_TOKEN": S[33], "DEMO_MODE": "fast"},
            "headers": {"X-Api-Key": S[34]},
        }}})
        .to_string(),
    );
    write(
        &plugin.join("hooks/hooks.json"),
        &json!({"hooks": {"Stop": [{"hooks": [
            {"type": "command", "command": format!("notify --auth-token={} done", S[48])},
            {"type": "command", "command": "${CLAUDE_PLUGIN_ROOT}/hooks/stop.sh"},
        ]}]}})
        .to_string(),
    );
    write(
        &plugin.join("credentials.json"),
        &json!({"k": S[46]}).to_string(),
    );
    write(&plugin.join("commands/hello.md"), "Say hello.\n");
    std::os::unix::fs::symlink(h.join(".aws/credentials"), c.join("plugins/aws.txt")).unwrap();
    // What is never configuration.
    write(
        &c.join("history.jsonl"),
        &format!("{{\"display\":\"{}\"}}\n", S[40]),
    );
    write(
        &c.join("projects/-home-a-p/0.jsonl"),
        &format!("{{\"t\":\"{}\"}}\n", S[41]),
    );
    write(&c.join("todos/t.json"), &format!("[\"{}\"]", S[42]));
    write(&c.join("statsig/cache"), S[43]);
    write(&c.join(".env"), &format!("TOKEN={}\n", S[44]));
    write(
        &c.join(".netrc"),
        &format!("machine x login y password {}\n", S[45]),
    );
    home
}

fn planned_text(plan: &SyncPlan) -> Vec<(String, String)> {
    plan.files
        .iter()
        .map(|f| {
            (
                f.rel_path.clone(),
                String::from_utf8_lossy(&f.bytes).into_owned(),
            )
        })
        .collect()
}

fn assert_no_secret(plan: &SyncPlan, secrets: &[&str]) {
    for (path, text) in planned_text(plan) {
        for secret in secrets {
            assert!(!text.contains(secret), "{path} carries {secret}:\n{text}");
        }
    }
    for w in &plan.withheld {
        let all = format!("{} {:?} {}", w.path, w.json_path, w.reason);
        for secret in secrets {
            assert!(
                !all.contains(secret),
                "withheld entry shows {secret}: {all}"
            );
        }
    }
    let rendered = render_dry_run(plan) + &dry_run_json(plan).to_string();
    for secret in secrets {
        assert!(!rendered.contains(secret), "the dry run shows {secret}");
    }
}

fn file<'a>(plan: &'a SyncPlan, path: &str) -> &'a PlannedFile {
    plan.files
        .iter()
        .find(|f| f.rel_path == path)
        .unwrap_or_else(|| panic!("{path} not planned: {:?}", plan.files))
}

fn json_of(plan: &SyncPlan, path: &str) -> Value {
    serde_json::from_slice(&file(plan, path).bytes).unwrap()
}

#[test]
fn no_planted_secret_is_planned_and_the_harmless_parts_are() {
    assert!(S.len() >= 39);
    let home = planted_home();
    let plan = plan(home.path()).unwrap();
    assert_no_secret(&plan, S);

    let paths: Vec<&str> = plan.files.iter().map(|f| f.rel_path.as_str()).collect();
    assert_eq!(
        paths,
        [
            "CLAUDE.md",
            "agents/tester.md",
            "commands/review.md",
            "mcp-servers.json",
            "plugins/cache/acme/demo/1.0.0/.claude-plugin/plugin.json",
            "plugins/cache/acme/demo/1.0.0/.mcp.json",
            "plugins/cache/acme/demo/1.0.0/commands/hello.md",
            "plugins/cache/acme/demo/1.0.0/hooks/hooks.json",
            "plugins/marketplaces/acme/.claude-plugin/marketplace.json",
            "settings.json",
            "settings.local.json",
            "skills/fmt/SKILL.md",
        ]
    );
    assert_eq!(
        file(&plan, "CLAUDE.md").bytes,
        b"Be brief. Prefer small commits.\n"
    );
    assert_eq!(
        file(&plan, "commands/review.md").bytes,
        b"Review the diff for bugs.\n"
    );
    // The MCP servers keep their names, commands and harmless arguments.
    let mcp = json_of(&plan, "mcp-servers.json");
    assert_eq!(mcp["mcpServers"]["github"]["command"], "github-mcp");
    assert_eq!(
        mcp["mcpServers"]["github"]["args"],
        json!(["stdio", "--token"])
    );
    assert!(mcp["mcpServers"]["github"].get("env").is_none());
    assert_eq!(
        mcp["mcpServers"]["tools"]["args"],
        json!(["-y", "@example/tools-mcp"])
    );
    assert!(mcp["mcpServers"]["remote"].get("url").is_none());
    assert_eq!(mcp["mcpServers"]["remote"]["type"], "http");
    assert!(mcp["mcpServers"]["query"].get("url").is_none());
    assert_eq!(
        mcp["mcpServers"]["oauthed"]["oauth"],
        json!({"clientId": "public-client"})
    );
    // settings.json keeps what is not secret.
    let settings = json_of(&plan, "settings.json");
    assert_eq!(settings["model"], "opus");
    assert_eq!(settings["theme"], "dark");
    assert_eq!(
        settings["env"],
        json!({"BASH_DEFAULT_TIMEOUT_MS": "60000", "MAX_THINKING_TOKENS": "8000"})
    );
    assert_eq!(settings["permissions"]["allow"], json!(["Bash(ls:*)"]));
    assert_eq!(
        settings["hooks"]["PreToolUse"][0]["hooks"],
        json!([{"type": "command", "command": "~/.claude/hooks/guard.sh"}])
    );
    assert_eq!(settings["hooks"]["PostToolUse"][0]["hooks"], json!([]));
    assert!(settings.get("statusLine").is_none());
    assert_eq!(
        json_of(&plan, "settings.local.json"),
        json!({"env": {"EDITOR": "vim"}})
    );
    let plugin_mcp = json_of(&plan, "plugins/cache/acme/demo/1.0.0/.mcp.json");
    assert_eq!(
        plugin_mcp["mcpServers"]["demo"],
        json!({"command": "${CLAUDE_PLUGIN_ROOT}/bin/demo-mcp", "env": {"DEMO_MODE": "fast"}, "headers": {}})
    );

    // Every withheld thing is listed with a reason.
    let reason = |path: &str, json_path: Option<&str>| {
        plan.withheld
            .iter()
            .find(|w| w.path == path && w.json_path.as_deref() == json_path)
            .map(|w| w.reason.clone())
            .unwrap_or_else(|| panic!("{path} {json_path:?} not withheld: {:#?}", plan.withheld))
    };
    assert!(reason("skills/ssh", None).contains("outside the config dir"));
    assert!(reason("agents/key.md", None).contains("outside the config dir"));
    assert!(reason("plugins/aws.txt", None).contains("outside the config dir"));
    assert!(reason("agents/creds.md", None).contains("not followed"));
    assert!(reason("commands/local.md", None).contains("not followed"));
    assert!(reason("plugins/marketplaces/acme/.git-credentials", None).contains("credentials"));
    assert!(reason("plugins/marketplaces/acme/.git", None).contains("version control"));
    assert!(reason("plugins/cache/acme/demo/1.0.0/.env", None).contains("credentials"));
    assert!(reason("plugins/cache/acme/demo/1.0.0/credentials.json", None).contains("credentials"));
    assert!(reason("commands/deploy.md", None).contains("GitHub token"));
    assert!(reason("skills/deploy/config.yaml", None).contains("secret-named"));
    assert!(reason("skills/deploy/signing.txt", None).contains("private key"));
    assert!(reason(".credentials.json", None).contains("credentials"));
    assert!(reason(".claude.json", None).contains("account"));
    assert!(reason("history.jsonl", None).contains("--include-history"));
    assert!(reason("projects", None).contains("session data"));
    assert!(reason(".env", None).contains("credentials"));
    assert!(reason(".netrc", None).contains("credentials"));
    assert!(reason("settings.json", Some("env.OPENAI_APIKEY")).contains("APIKEY"));
    assert!(reason("settings.json", Some("env.GITHUB_PAT")).contains("_PAT"));
    assert!(reason("settings.json", Some("env.DATABASE_URL")).contains("database"));
    assert!(reason("settings.json", Some("env.HTTPS_PROXY")).contains("password"));
    assert!(reason("settings.json", Some("env.SENTRY_URL")).contains("token as its user"));
    assert!(reason("settings.json", Some("otelHeadersHelper")).contains("credential helper"));
    assert!(reason("settings.json", Some("statusLine")).contains("command"));
    assert!(reason("settings.json", Some("hooks.PreToolUse[0].hooks[1]")).contains("Bearer"));
    assert!(reason("settings.json", Some("note")).contains("Anthropic"));
    assert!(reason(".claude.json", Some("mcpServers.github.args[2]")).contains("credential flag"));
    assert!(reason(".claude.json", Some("mcpServers.github.args[3]")).contains("credential flag"));
    assert!(reason(".claude.json", Some("mcpServers.tools.args[2]")).contains("Slack"));
    assert!(reason(".claude.json", Some("mcpServers.tools.args[3]")).contains("AWS"));
    assert!(reason(".claude.json", Some("mcpServers.remote.url")).contains("password"));
    assert!(reason(".claude.json", Some("mcpServers.query.url")).contains("query"));
    assert!(
        reason(
            ".claude.json",
            Some("mcpServers.oauthed.oauth.clientSecret")
        )
        .contains("credential")
    );
    assert!(
        reason(".claude.json", Some("mcpServers.remote.headersHelper"))
            .contains("credential helper")
    );
    assert!(reason(".claude.json", Some("mcpServers.github.env")).contains("environment"));
    assert!(
        reason(
            "plugins/cache/acme/demo/1.0.0/hooks/hooks.json",
            Some("hooks.Stop[0].hooks[0]")
        )
        .contains("command")
    );
}

#[test]
fn include_options_still_scan() {
    let home = planted_home();
    let opts = CollectOptions {
        include_history: true,
        include_mcp_secrets: true,
    };
    let plan = plan_source(&ConfigSource::from_env(home.path(), None), &opts).unwrap();
    // The history holds no token pattern, so it goes; every planted credential stays.
    assert!(plan.files.iter().any(|f| f.rel_path == "history.jsonl"));
    let secrets: Vec<&str> = S.iter().copied().filter(|s| *s != S[40]).collect();
    assert_no_secret(&plan, &secrets);
    let mcp = json_of(&plan, "mcp-servers.json");
    assert_eq!(
        mcp["mcpServers"]["github"]["env"],
        json!({"LOG_LEVEL": "debug"})
    );
    assert_eq!(mcp["mcpServers"]["remote"]["headers"], json!({}));
}

#[test]
fn dry_run_text_of_the_corpus() {
    let home = planted_home();
    let plan = plan(home.path()).unwrap();
    insta::assert_snapshot!(render_dry_run(&plan));
}

#[test]
fn scanner_knows_the_token_shapes() {
    let secret = [
        "sk-ant-api03-abcdefgh12",
        "key: sk-proj-abc123def456ghi789",
        "ghp_abcdefghijklmnop1234",
        "github_pat_11ABCDEFG0123456789_xyz",
        "xoxp-1234-5678",
        "AKIAABCDEFGHIJKLMNOP",
        "-----BEGIN EC PRIVATE KEY-----",
        "https://u:p4ss@h.example/",
        "https://h.example/x?key=abc",
        "https://h.example/x?a=1&token=abc",
        "Authorization: Bearer abc.def-123",
        "Basic dXNlcjpwYXNzd29yZA==",
        "export API_KEY=abc123def456ghi",
        "password: \"hunter22\"",
    ];
    for s in secret {
        assert!(string_reason(s, Mode::Plain).is_some(), "{s}");
    }
    let harmless = [
        "Use the sk-ant-... key from the console",
        "Basic configuration and Bearer tokens are described below",
        "https://example.com/docs?page=2",
        "ssh://git@github.com/a/b",
        "Bearer ${TOKEN}",
        "https://u:${PASS}@h.example/",
        "max_tokens = 4096",
        "task-runner-for-everything",
        "token = os.environ[\"GITHUB_TOKEN\"]",
        "~/.claude/hooks/pre_tool_use.py --check",
    ];
    for s in harmless {
        assert_eq!(string_reason(s, Mode::Command), None, "{s}");
    }
    assert!(string_reason("Zq8vT3kL9pX2mN7rB4wY6cJ1hF5dG0sA", Mode::Arg).is_some());
    assert!(string_reason("--key=Zq8vT3kL9pX2mN7rB4wY6cJ1hF5dG0sA", Mode::Arg).is_some());
    assert!(string_reason("@modelcontextprotocol/server-filesystem", Mode::Arg).is_none());
    assert!(string_reason("/home/a/projects/mcp-server/dist/index.js", Mode::Arg).is_none());
    assert!(env_name_reason("MAX_THINKING_TOKENS").is_none());
    assert!(env_name_reason("BASH_DEFAULT_TIMEOUT_MS").is_none());
    for name in [
        "GITHUB_PAT",
        "OPENAI_APIKEY",
        "X_TOKEN",
        "DATABASE_URL",
        "OTEL_EXPORTER_OTLP_HEADERS",
        "ANTHROPIC_CUSTOM_HEADERS",
        "DB_PASSWORD",
    ] {
        assert!(env_name_reason(name).is_some(), "{name}");
    }
    for key in [
        "api_key",
        "apiKey",
        "clientSecret",
        "client_secret",
        "Authorization",
        "auth",
        "pat",
        "credentials",
        "private_key",
        "headersHelper",
        "otelHeadersHelper",
        "apiKeyHelper",
        "awsAuthRefresh",
        "awsCredentialExport",
        "passwd",
    ] {
        assert!(key_reason(key).is_some(), "{key}");
    }
    for key in [
        "maxTokens",
        "model",
        "command",
        "args",
        "type",
        "url",
        "author",
    ] {
        assert!(key_reason(key).is_none(), "{key}");
    }
}

#[test]
fn symlinked_config_files_are_never_followed() {
    let home = tempfile::tempdir().unwrap();
    let c = home.path().join(".claude");
    write(&home.path().join("dotfiles/CLAUDE.md"), "Be brief.\n");
    std::fs::create_dir_all(&c).unwrap();
    std::os::unix::fs::symlink(home.path().join("dotfiles/CLAUDE.md"), c.join("CLAUDE.md"))
        .unwrap();
    std::os::unix::fs::symlink(home.path().join("dotfiles"), c.join("skills")).unwrap();
    std::os::unix::fs::symlink(home.path().join("nowhere"), c.join("settings.json")).unwrap();
    let plan = plan(home.path()).unwrap();
    assert!(plan.files.is_empty(), "{:?}", plan.files);
    let paths: Vec<&str> = plan.withheld.iter().map(|w| w.path.as_str()).collect();
    assert_eq!(paths, ["CLAUDE.md", "settings.json", "skills"]);
}

#[test]
fn limits_and_odd_files() {
    let home = tempfile::tempdir().unwrap();
    let c = home.path().join(".claude");
    write(&c.join("skills/a/SKILL.md"), "A\n");
    let big = std::fs::File::create(c.join("skills/a/big.bin")).unwrap();
    big.set_len(MAX_FILE_BYTES + 1).unwrap();
    nix::unistd::mkfifo(&c.join("skills/a/fifo"), nix::sys::stat::Mode::S_IRWXU).unwrap();
    write(
        &c.join("settings.json"),
        "{\"env\": {\"ANTHROPIC_API_KEY\": ",
    );
    let plan = plan(home.path()).unwrap();
    let paths: Vec<&str> = plan.files.iter().map(|f| f.rel_path.as_str()).collect();
    assert_eq!(paths, ["skills/a/SKILL.md"]);
    let withheld: BTreeMap<&str, &str> = plan
        .withheld
        .iter()
        .map(|w| (w.path.as_str(), w.reason.as_str()))
        .collect();
    assert!(withheld["skills/a/big.bin"].starts_with("too large"));
    assert_eq!(withheld["skills/a/fifo"], "not a regular file");
    assert!(withheld["settings.json"].contains("not valid JSON"));
}

#[test]
fn missing_config_is_empty_and_a_file_is_refused() {
    let home = tempfile::tempdir().unwrap();
    assert_eq!(plan(home.path()).unwrap(), SyncPlan::default());
    write(&home.path().join(".claude"), "not a dir");
    assert_eq!(
        plan(home.path()).unwrap_err().code,
        error_codes::USER_CONFIG_UNAVAILABLE
    );
}

#[test]
fn claude_config_dir_lists_claude_json_once() {
    let home = tempfile::tempdir().unwrap();
    let dir = home.path().join("cfg");
    write(
        &dir.join(".claude.json"),
        r#"{"userID": "u", "mcpServers": {"a": {"command": "a"}}}"#,
    );
    let src = ConfigSource::from_env(home.path(), Some(&dir));
    let plan = plan_source(&src, &CollectOptions::default()).unwrap();
    assert_eq!(
        json_of(&plan, MCP_SERVERS_FILE),
        json!({"mcpServers": {"a": {"command": "a"}}})
    );
    assert_eq!(
        plan.withheld
            .iter()
            .filter(|w| w.path == ".claude.json")
            .count(),
        1
    );
}

#[test]
fn second_sync_uploads_only_changes_and_deletes_what_went_away() {
    let home = tempfile::tempdir().unwrap();
    let c = home.path().join(".claude");
    write(&c.join("CLAUDE.md"), "A\n");
    write(&c.join("commands/x.md"), "X\n");
    let first = plan(home.path()).unwrap();
    let ch = changes(&first, None);
    assert_eq!(ch.upload, ["CLAUDE.md", "commands/x.md"]);
    let remote: RemoteManifest =
        serde_json::from_str(&serde_json::to_string(&ch.next).unwrap()).unwrap();
    let again = changes(&plan(home.path()).unwrap(), Some(&remote));
    assert!(again.is_noop());
    assert!(render_sync(&first, &again, false).contains("Nothing to sync"));
    write(&c.join("commands/x.md"), "X2\n");
    std::fs::remove_file(c.join("CLAUDE.md")).unwrap();
    let third_plan = plan(home.path()).unwrap();
    let third = changes(&third_plan, Some(&remote));
    assert_eq!(third.upload, ["commands/x.md"]);
    assert_eq!(third.delete, ["CLAUDE.md"]);
    let text = render_sync(&third_plan, &third, false);
    assert!(text.contains("delete       CLAUDE.md"), "{text}");
    // An unknown manifest version: nothing trusted.
    let old = RemoteManifest {
        version: 99,
        ..remote
    };
    assert_eq!(changes(&third_plan, Some(&old)).upload.len(), 1);
    assert!(changes(&third_plan, Some(&old)).unchanged.is_empty());
}

#[test]
fn materialize_refuses_paths_that_escape() {
    let scratch = tempfile::tempdir().unwrap();
    for bad in ["../evil", "/abs", "", "a/../../b"] {
        let f = PlannedFile {
            rel_path: bad.into(),
            bytes: b"x".to_vec(),
        };
        assert!(materialize(&f, scratch.path()).is_err(), "{bad}");
    }
    let f = PlannedFile {
        rel_path: "a/b.md".into(),
        bytes: b"x".to_vec(),
    };
    assert_eq!(
        std::fs::read(materialize(&f, scratch.path()).unwrap()).unwrap(),
        b"x"
    );
}

// ---------------------------------------------------------------------------
// Random JSON trees with secrets at random places.

/// A credential of some shape, made unique by `n`.
fn secret_strategy() -> impl Strategy<Value = String> {
    let tail = "[A-Za-z0-9]{12,20}";
    prop_oneof![
        tail.prop_map(|t| format!("sk-ant-api03-{t}")),
        tail.prop_map(|t| format!("ghp_{t}XYZ")),
        tail.prop_map(|t| format!("github_pat_{t}")),
        tail.prop_map(|t| format!("xoxb-{t}")),
        "[A-Z0-9]{16}".prop_map(|t| format!("AKIA{t}")),
        tail.prop_map(|t| format!("-----BEGIN PRIVATE KEY-----{t}")),
        tail.prop_map(|t| format!("https://u:{t}@h.example/x")),
        tail.prop_map(|t| format!("https://h.example/x?api_key={t}")),
        tail.prop_map(|t| format!("Bearer {t}9")),
    ]
}

/// Where a secret goes: a value, inside a longer string, an object key, or the value
/// of a secret-named key / env variable (then any string is the secret).
#[derive(Clone, Debug)]
enum Insert {
    Value(String),
    Embedded(String),
    Key(String),
    NamedValue(&'static str, String),
    EnvValue(&'static str, String),
    Command(String),
}

fn insert_strategy() -> impl Strategy<Value = Insert> {
    let named = prop_oneof![
        Just("password"),
        Just("api_key"),
        Just("clientSecret"),
        Just("token"),
        Just("Authorization"),
        Just("headersHelper"),
        Just("private_key"),
        Just("auth"),
    ];
    let env = prop_oneof![
        Just("GITHUB_PAT"),
        Just("OPENAI_APIKEY"),
        Just("DATABASE_URL"),
        Just("ANTHROPIC_CUSTOM_HEADERS"),
        Just("MY_SECRET"),
        Just("X_TOKEN"),
    ];
    let plain = "PLAIN[a-z]{6,10}";
    prop_oneof![
        secret_strategy().prop_map(Insert::Value),
        secret_strategy().prop_map(Insert::Embedded),
        secret_strategy().prop_map(Insert::Key),
        (named, plain).prop_map(|(k, v)| Insert::NamedValue(k, v)),
        (env, plain).prop_map(|(k, v)| Insert::EnvValue(k, v)),
        secret_strategy().prop_map(Insert::Command),
    ]
}

fn tree_strategy() -> impl Strategy<Value = Value> {
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::Bool),
        any::<i32>().prop_map(|n| json!(n)),
        "[a-z ]{0,12}".prop_map(Value::String),
    ];
    leaf.prop_recursive(4, 48, 6, |inner| {
        prop_oneof![
            proptest::collection::vec(inner.clone(), 0..6).prop_map(Value::Array),
            proptest::collection::btree_map("[a-z]{1,6}", inner, 0..6)
                .prop_map(|m| Value::Object(m.into_iter().collect())),
        ]
    })
}

/// Puts `insert` somewhere in `tree` chosen by `pick`; returns the secret string.
fn plant(tree: &mut Value, insert: &Insert, pick: usize) -> String {
    // Descend along `pick` to a container.
    let mut node = tree;
    let mut p = pick;
    loop {
        let len = match node {
            Value::Array(items) => items.len(),
            Value::Object(map) => map.len(),
            _ => 0,
        };
        if len == 0 || p.is_multiple_of(3) {
            break;
        }
        let i = p % len;
        p /= 3;
        node = match node {
            Value::Array(items) => &mut items[i],
            Value::Object(map) => map.values_mut().nth(i).unwrap(),
            _ => unreachable!(),
        };
    }
    if !matches!(node, Value::Array(_) | Value::Object(_)) {
        *node = json!({});
    }
    let (key, value, secret) = match insert {
        Insert::Value(s) => ("v".to_string(), json!(s), s.clone()),
        Insert::Embedded(s) => ("v".to_string(), json!(format!("see {s} here")), s.clone()),
        Insert::Key(s) => (s.clone(), json!("x"), s.clone()),
        Insert::NamedValue(k, v) => (k.to_string(), json!(v), v.clone()),
        Insert::EnvValue(k, v) => ("env".to_string(), json!({ *k: v }), v.clone()),
        Insert::Command(s) => (
            "hook".to_string(),
            json!({"type": "command", "command": format!("run --x {s}")}),
            s.clone(),
        ),
    };
    match node {
        Value::Array(items) => {
            let i = pick % (items.len() + 1);
            items.insert(i, json!({ key: value }));
        }
        Value::Object(map) => {
            map.insert(key, value);
        }
        _ => unreachable!(),
    }
    secret
}

proptest! {
    #[test]
    fn no_inserted_secret_survives_planning(
        mut tree in tree_strategy(),
        inserts in proptest::collection::vec((insert_strategy(), any::<usize>()), 1..5),
        as_mcp in any::<bool>(),
    ) {
        let mut secrets = Vec::new();
        for (insert, pick) in &inserts {
            secrets.push(plant(&mut tree, insert, *pick));
        }
        let mut snap = Snapshot::default();
        if as_mcp {
            snap.claude_json = Some(Node::File(
                serde_json::to_vec(&json!({"mcpServers": {"s": tree.clone()}})).unwrap(),
            ));
            snap.claude_json_outside = true;
        }
        snap.entries.insert("settings.json".into(), Node::File(serde_json::to_vec(&tree).unwrap()));
        snap.entries.insert("plugins".into(), Node::Dir);
        snap.entries.insert("plugins/p/.mcp.json".into(), Node::File(serde_json::to_vec(&tree).unwrap()));
        for opts in [CollectOptions::default(), CollectOptions { include_history: true, include_mcp_secrets: true }] {
            let plan = plan_snapshot(&snap, &opts);
            let refs: Vec<&str> = secrets.iter().map(String::as_str).collect();
            assert_no_secret(&plan, &refs);
            // Planning is a function of the snapshot.
            prop_assert_eq!(&plan, &plan_snapshot(&snap, &opts));
        }
    }
}
