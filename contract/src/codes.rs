//! The one table of Parhelia's user-facing error codes.
//!
//! Every error a user can see carries a stable code from this table. The code
//! says what happened; [`ErrorCode::why`] and [`ErrorCode::recover`] are what
//! `parhelia help CODE` prints. It is a contract between the parts: the agent
//! journals these codes (`SessionFinished.error_code`, `CheckpointFailed.code`), the
//! checkpoint crate's errors carry them, and a coded gRPC error carries its code in the
//! [`METADATA_KEY`] metadata (never in its message). The coordinator adds the advice
//! chosen by cause (`parhelia::error_codes::advice`).
//!
//! Families, and the exit status of the `parhelia` CLI for each:
//!
//! | family | meaning        | exit status |
//! |--------|----------------|-------------|
//! | —      | success        | 0           |
//! | —      | internal error without a code (a bug) | 1 |
//! | E1xx   | input (also clap's usage errors)      | 2 |
//! | E2xx   | not found      | 3           |
//! | E3xx   | budget         | 4           |
//! | E4xx   | auth           | 5           |
//! | E5xx   | infrastructure | 6           |
//! | E6xx   | operations     | 7           |
//!
//! `Ex00` in each family is the family's general code, used when nothing more
//! specific fits (the seeds' `E200`/`E300`/`E500` live on as those).
//! Codes are never reused for a different meaning; retired codes stay listed.

/// The gRPC metadata key that carries a coded error's code, both ways between the
/// agent and the coordinator and from the coordinator to the CLI.
pub const METADATA_KEY: &str = "parhelia-error-code";

/// One row of the table.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ErrorCode {
    /// `E` plus three digits; the first digit is the family.
    pub code: &'static str,
    /// SCREAMING_SNAKE_CASE name, stable like the code.
    pub name: &'static str,
    /// What happened, as a short sentence.
    pub what: &'static str,
    /// Why it usually happens.
    pub why: &'static str,
    /// How to recover; the first sentence is printed as the hint under an error.
    pub recover: &'static str,
}

impl ErrorCode {
    /// The CLI's exit status for this code (see the module docs).
    pub fn exit_status(&self) -> i32 {
        exit_status_for_code(self.code)
    }

    /// The one-line hint printed under an error message.
    pub fn hint(&self) -> String {
        format!("{} (more: parhelia help {})", self.recover, self.code)
    }
}

/// The exit status for any code string, known or not: by family digit.
/// Anything that is not a well-formed code is an internal error (1).
pub fn exit_status_for_code(code: &str) -> i32 {
    let bytes = code.as_bytes();
    if bytes.len() != 4 || bytes[0] != b'E' || !bytes[1..].iter().all(u8::is_ascii_digit) {
        return 1;
    }
    match bytes[1] {
        b'1' => 2,
        b'2' => 3,
        b'3' => 4,
        b'4' => 5,
        b'5' => 6,
        b'6' => 7,
        _ => 1,
    }
}

/// Looks a code up, case-insensitively (`e201` finds `E201`).
pub fn lookup(code: &str) -> Option<&'static ErrorCode> {
    ALL.iter().find(|c| c.code.eq_ignore_ascii_case(code))
}

/// The row for a code, or, for a code this build does not know (an agent
/// may be newer), its family's general `Ex00` row; anything else is E500.
pub fn lookup_or_family(code: &str) -> ErrorCode {
    if let Some(known) = lookup(code) {
        return *known;
    }
    match exit_status_for_code(code) {
        2 => INVALID_INPUT,
        3 => NOT_FOUND,
        4 => BUDGET_EXCEEDED,
        5 => AUTH_FAILED,
        7 => CLAUDE_CODE_ERROR_RESULT,
        _ => INFRASTRUCTURE_ERROR,
    }
}

macro_rules! error_codes {
    ($( $ident:ident = $code:literal $name:literal {
        what: $what:literal,
        why: $why:literal,
        recover: $recover:literal $(,)?
    } )*) => {
        $(
            #[doc = $what]
            pub const $ident: ErrorCode = ErrorCode {
                code: $code,
                name: $name,
                what: $what,
                why: $why,
                recover: $recover,
            };
        )*
        /// Every code, in table order.
        pub const ALL: &[ErrorCode] = &[$($ident),*];
    };
}

error_codes! {
    // E1xx: input.
    INVALID_INPUT = "E100" "INVALID_INPUT" {
        what: "The command's input is not valid.",
        why: "An argument or option has a value Parhelia cannot use, or a configuration value (in a config.toml, a PARHELIA_* variable or `--set`) is of the wrong type or out of range; the message names the file or variable and the key.",
        recover: "Check the arguments against `parhelia help` and try again.",
    }
    EMPTY_PROMPT = "E101" "EMPTY_PROMPT" {
        what: "The task prompt is empty.",
        why: "A task needs an instruction for Claude Code; the prompt was empty or only whitespace.",
        recover: "Pass the instruction as the first argument, e.g. `parhelia task create \"Fix the failing tests\"`.",
    }
    WORKSPACE_NOT_FOUND = "E102" "WORKSPACE_NOT_FOUND" {
        what: "The workspace directory does not exist.",
        why: "`--workspace` names a path that is missing or is not a directory.",
        recover: "Pass an existing directory to `--workspace`, or leave it out to start with an empty workspace.",
    }
    UNKNOWN_BACKEND = "E103" "UNKNOWN_BACKEND" {
        what: "The backend is not known.",
        why: "`--backend` accepts `local` and `modal`.",
        recover: "Use `--backend local` or `--backend modal`, or leave the option out (local).",
    }
    UNKNOWN_STATUS = "E104" "UNKNOWN_STATUS" {
        what: "The task status (or container state, or health) is not known.",
        why: "`--status` accepts pending, running, completed, failed, cancelled or interrupted; `--state` and `--health` accept the container states and health values listed in `parhelia help container`.",
        recover: "Use one of pending, running, completed, failed, cancelled, interrupted (or a listed container state or health).",
    }
    MODAL_REQUEST_INVALID = "E106" "MODAL_REQUEST_INVALID" {
        what: "Modal refused the request as invalid.",
        why: "A value Parhelia sent to Modal is not one it accepts (a GPU type, a resource size, a path), or the Modal bridge did not understand the request.",
        recover: "Check `--gpu` (T4, L4, A10G, L40S, A100, A100-80GB, H100, H200, B200, optionally `:N`), `--memory` and `--timeout`; the message says which value.",
    }
    NOT_A_GIT_REPOSITORY = "E107" "NOT_A_GIT_REPOSITORY" {
        what: "A directory that must be a git repository is not one.",
        why: "`parhelia session pull` brings a session's commits into a git repository: the current directory (or `--repo`) is not inside one, or the session's workspace has no `.git` of its own (it was not started from a repository and never ran `git init`).",
        recover: "Run the command inside your repository, or pass `--repo PATH` (by default the pull goes to the task's `--workspace` while it exists); for a session without a repository, use `parhelia checkpoint show` to see its files.",
    }
    BRANCH_EXISTS = "E108" "BRANCH_EXISTS" {
        what: "The branch already exists.",
        why: "`parhelia session pull` creates a branch (by default `parhelia/<session-id>`) and does not move an existing one unless asked to.",
        recover: "Pass `--force` to move the branch to the session's result, or `--branch NAME` to use another name.",
    }
    BRANCH_CHECKED_OUT = "E109" "BRANCH_CHECKED_OUT" {
        what: "The branch is checked out.",
        why: "`parhelia session pull` never touches your working tree, so it does not update the current branch (or one checked out in another worktree).",
        recover: "Pass `--branch NAME` to pull into another branch, or switch away from this one first (then `--force` moves it).",
    }
    UNSAFE_REPOSITORY = "E110" "UNSAFE_REPOSITORY" {
        what: "The session's repository is unsafe to run git on.",
        why: "`parhelia session pull` runs git on a copy of the session's workspace, outside any sandbox; the session's `.git` holds a symbolic link, fifo, socket or device, is itself a link or a `gitdir:` file, or names other object directories (`objects/info/alternates`) or another repository (`commondir`), any of which would let git read or write files outside the copy. Nothing was changed.",
        recover: "Look at the named path in the session's workspace (`parhelia checkpoint show`); if the session made it, remove it inside the session (or `git clone` the repository there) and pull again.",
    }
    WORKSPACE_REFUSED = "E111" "WORKSPACE_REFUSED" {
        what: "The workspace cannot be copied into a session.",
        why: "`--workspace` is the whole filesystem, your home directory itself (or a directory containing it), or a system directory (such as /etc, /usr, /var, /proc, /dev), also when reached through a symlink; or the workspace holds a special file (a FIFO, socket or device) that a copy would block on or reproduce. A session can read everything in its workspace, so these are never copied.",
        recover: "Pass the project directory itself (e.g. `--workspace ~/src/myproject`), and remove or move the special file the message names.",
    }
    WORKSPACE_TOO_LARGE = "E112" "WORKSPACE_TOO_LARGE" {
        what: "The workspace is larger than the copy limit.",
        why: "Before copying, Parhelia counts the workspace's bytes and files (without following symlinks); it exceeds `workspace.max_copy_bytes` (default 10 GiB) or `workspace.max_copy_files` (default 1000000), which usually means the wrong directory was passed.",
        recover: "Pass a smaller directory, give this task a larger limit (`parhelia --set workspace.max_copy_bytes=N task create …`), raise `workspace.max_copy_bytes` in `.parhelia/config.toml` for every task (the coordinator reloads it), or pass `--allow-large-workspace` to copy it anyway.",
    }
    LIMIT_NOT_ENFORCEABLE = "E113" "LIMIT_NOT_ENFORCEABLE" {
        what: "The backend cannot enforce a limit the task asks for.",
        why: "A limit is enforced or refused, never accepted and ignored: the local backend caps CPU and memory by writing them into the session's cgroup (`cpu.max`/`memory.max` on cgroup v2, `cpu.cfs_quota_us`/`memory.limit_in_bytes` on v1); this host has no cgroup file system the coordinator can write (or the controller is not delegated to it), so `--cpu`/`--memory` would not hold.",
        recover: "Run the task with `--backend modal` (which gives the cores and memory asked for), run the coordinator where it may create cgroups (as root, or in a delegated cgroup v2 subtree), or leave those flags out.",
    }
    GPU_NOT_ON_HOST = "E114" "GPU_NOT_ON_HOST" {
        what: "The task asks for a GPU this machine does not have.",
        why: "A local session runs on this machine, and `nvidia-smi -L` lists no GPU of the type (or not as many) `--gpu` asks for; the task would run without it, so nothing was started.",
        recover: "Run the task with `--backend modal` (e.g. `parhelia task create \"…\" --gpu A10G --backend modal`), or leave `--gpu` out for a local run.",
    }
    USER_CONFIG_UNAVAILABLE = "E115" "USER_CONFIG_UNAVAILABLE" {
        what: "Your Claude Code setup could not be read, or not carried into the session.",
        why: "A session starts with what the config-sync planner lets through of your Claude Code configuration (`~/.claude`, or `$CLAUDE_CONFIG_DIR`, and `.claude.json`'s MCP servers; credentials withheld); that directory is not a directory or could not be read, or a local session's copy of it could not be written, so nothing was started (or synced).",
        recover: "Fix the path the message names (`parhelia config sync --dry-run` shows what is read, and names it again until it is fixed), or free space in the state directory when the copy failed; a task can also be created with `--no-user-config` to start without your setup.",
    }
    PRIVATE_HOME_UNAVAILABLE = "E116" "PRIVATE_HOME_UNAVAILABLE" {
        what: "The session's private home directory could not be prepared.",
        why: "A sandboxed local session gets a writable home of its own (`sessions/<session-id>/home` in the state directory, mounted at your home's path) holding copies of your shell and git dotfiles; it could not be created or filled (a full disk, a permission, or a path in it the session replaced with a link), so nothing was started.",
        recover: "Check the state directory's free space and permissions (`parhelia doctor`); if the session's `home` holds a link where a directory should be, remove it (or delete the session) and resume, or set `local.isolation = \"none\"` in `.parhelia/config.toml` to run unconfined.",
    }
    UNKNOWN_EVENT_TYPE = "E117" "UNKNOWN_EVENT_TYPE" {
        what: "A `--type` filter names an event type that does not exist.",
        why: "Only the event types Parhelia records (and the seeds' names it maps to them, such as `container_started`) can be filtered on; an unknown one would silently match nothing.",
        recover: "Use one of the types the message lists; `container_started` is the seeds' name for `session_started`.",
    }
    CONFIG_NOT_SHARED = "E118" "CONFIG_NOT_SHARED" {
        what: "A `--set` value differs from the running coordinator's configuration.",
        why: "The coordinator is the one source of effective configuration: its launches, queue and reconciler use its own values (config.toml, its environment, its own `--set`), so a one-off `--set` on a command would be shown but not applied.",
        recover: "Put the value in config.toml (the coordinator reloads it within a second; `parhelia coordinator reload` at once), or leave `--set` out; `parhelia config show` prints the values in effect.",
    }

    SET_NOT_PER_TASK = "E119" "SET_NOT_PER_TASK" {
        what: "A `--set` on `task create` names a key that cannot apply to one task.",
        why: "`task create --set` changes only that task's launch (its agent spec, its checkpoint policy, its workspace copy); keys such as worker limits, the database, the reconciler, isolation, rates and the Modal account are the coordinator's own and shape every task, so one task cannot have its own value.",
        recover: "Put the value in config.toml (the coordinator reloads it within a second; `parhelia coordinator reload` at once) and create the task without that `--set`; the message lists the keys a task may set (`docs/formats/config.md` marks them too).",
    }
    CONFIRMATION_REQUIRED = "E130" "CONFIRMATION_REQUIRED" {
        what: "A destructive operation was asked for without confirmation.",
        why: "The MCP server's destructive tools (checkpoint restore, task delete and cancel, session kill, container terminate, budget set, cleanup with terminate) act only when called with `confirm: true`, so that a model cannot destroy work by a guess; nothing was done.",
        recover: "Check that the operation is what you mean, then call the tool again with `confirm: true`.",
    }

    // E2xx: not found.
    NOT_FOUND = "E200" "NOT_FOUND" {
        what: "The named object was not found.",
        why: "The id is misspelled, or the object belongs to another state directory.",
        recover: "List what exists (`parhelia task list`, `parhelia status`) and check which `.parhelia/` directory is in use.",
    }
    TASK_NOT_FOUND = "E201" "TASK_NOT_FOUND" {
        what: "No task has this id.",
        why: "The id is misspelled, or the task was recorded in another state directory (a `.parhelia/` found by walking up from the current directory wins over `$PARHELIA_HOME` and `~/.parhelia`).",
        recover: "Run `parhelia task list` to see the task ids in this state directory.",
    }
    SESSION_NOT_FOUND = "E202" "SESSION_NOT_FOUND" {
        what: "No session has this id.",
        why: "The id is misspelled, or the session was recorded in another state directory.",
        recover: "Run `parhelia status` to see running sessions, or `parhelia task show TASK_ID` for a task's session.",
    }
    CONTAINER_NOT_FOUND = "E203" "CONTAINER_NOT_FOUND" {
        what: "No container has this id.",
        why: "The id is misspelled, or the container was recorded in another state directory.",
        recover: "Run `parhelia task show TASK_ID` to see a task's container.",
    }
    HELP_TOPIC_NOT_FOUND = "E204" "HELP_TOPIC_NOT_FOUND" {
        what: "There is no help for this topic or code.",
        why: "The topic is not a guide, a command name or a known error code (or, for `parhelia examples`, not an examples topic).",
        recover: "Run `parhelia help` for the guides and the commands, `parhelia help codes` for the error codes, or `parhelia examples` for the example topics.",
    }

    CHECKPOINT_NOT_FOUND = "E205" "CHECKPOINT_NOT_FOUND" {
        what: "No such checkpoint.",
        why: "The id names no checkpoint in any session's store here, or the session has no checkpoint yet.",
        recover: "Run `parhelia checkpoint list` (or `parhelia checkpoint list SESSION_ID`) to see the checkpoint ids.",
    }
    MODAL_OBJECT_NOT_FOUND = "E206" "MODAL_OBJECT_NOT_FOUND" {
        what: "A Modal object was not found.",
        why: "The sandbox, volume, app or file on the volume does not exist (any more): a sandbox ends at its timeout, a volume may have been deleted.",
        recover: "Run `parhelia modal setup` to create the volume and app, then `parhelia task retry TASK_ID` for a task that failed to launch; for a sandbox, `parhelia reconciler run --once` records that it is gone and `parhelia resume SESSION_ID` brings its session back.",
    }
    SECRET_NOT_SET = "E207" "SECRET_NOT_SET" {
        what: "A secret the task names is not set.",
        why: "On the local backend, `task create --secret NAME` passes the environment variable NAME from the shell that runs `parhelia` (else the coordinator's) into the session; this one is not set there (or is not valid UTF-8). Nothing was started. Its value is never stored: a task relaunched later (retry, resume, after a coordinator restart) takes it again from the command that relaunches it, or the coordinator's environment.",
        recover: "Export it in the shell that runs `parhelia` (`export NAME=...`) and run the command again (`parhelia task create ... --secret NAME`, or `parhelia task retry TASK_ID`); or leave `--secret NAME` out.",
    }

    // E3xx: budget.
    BUDGET_EXCEEDED = "E300" "BUDGET_EXCEEDED" {
        what: "A budget ceiling was reached, or would be.",
        why: "The spend (compute and model, from the ledger) reached a ceiling: the task's `--max-cost`, the global budget or the daily one; or the task's estimate exceeds what remains; or Claude Code stopped at its own `--max-budget-usd`.",
        recover: "Run `parhelia budget show`; raise the ceiling that was reached — the global one with `parhelia budget set AMOUNT` (or `--daily AMOUNT`), the task's own with `parhelia budget set --task TASK_ID --max-cost AMOUNT` — then `parhelia resume SESSION_ID` or `parhelia task retry TASK_ID`.",
    }
    TASK_TIMEOUT = "E301" "TASK_TIMEOUT" {
        what: "The task reached its time limit.",
        why: "It ran for its `--timeout` (counted from the start of its current session): the agent took a final checkpoint and stopped it. Nothing was lost.",
        recover: "`parhelia resume SESSION_ID -m \"go on\"` continues it from its final checkpoint with a fresh time limit (without `-m` it would wait for input until the limit stopped it again), or `parhelia task retry TASK_ID` starts over; pass a larger `--timeout` next time.",
    }

    // E4xx: auth.
    AUTH_FAILED = "E400" "AUTH_FAILED" {
        what: "Authentication failed.",
        why: "A credential was missing or refused.",
        recover: "Check the credentials in your environment and try again.",
    }
    MODEL_API_AUTH_REJECTED = "E401" "MODEL_API_AUTH_REJECTED" {
        what: "The model API refused the credentials.",
        why: "The API answered 401 or 403: `ANTHROPIC_API_KEY` / `ANTHROPIC_AUTH_TOKEN` is missing, wrong, expired or lacks access.",
        recover: "Export a valid `ANTHROPIC_API_KEY` in the shell you run `parhelia` from, then create the task again.",
    }
    AGENT_AUTH_REJECTED = "E402" "AGENT_AUTH_REJECTED" {
        what: "The agent refused the coordinator's session secret.",
        why: "The agent answering on the container's endpoint is not the one this session launched, or the secret in the database does not match.",
        recover: "Stop it with `parhelia task cancel TASK_ID` (a refused stop request ends its processes by signal, which needs no secret), then run `parhelia task retry TASK_ID`: the new attempt gets a new secret. If it repeats, report it as a bug.",
    }
    MODAL_CREDENTIALS_MISSING = "E403" "MODAL_CREDENTIALS_MISSING" {
        what: "No Modal credentials were found.",
        why: "Neither `MODAL_TOKEN_ID`/`MODAL_TOKEN_SECRET` nor `~/.modal.toml` holds a Modal token.",
        recover: "Run `modal token new` (or export `MODAL_TOKEN_ID` and `MODAL_TOKEN_SECRET`, then `parhelia coordinator stop` so that the next command starts the coordinator with them), then `parhelia modal setup`.",
    }
    MODAL_CREDENTIALS_REJECTED = "E404" "MODAL_CREDENTIALS_REJECTED" {
        what: "Modal refused the credentials.",
        why: "The Modal token is wrong, revoked, or belongs to another workspace.",
        recover: "Create a new token with `modal token new` and run `parhelia modal setup` again (a token exported as `MODAL_TOKEN_ID`/`MODAL_TOKEN_SECRET` wins over the one `modal token new` writes: export the new one instead, then `parhelia coordinator stop`); then `parhelia task retry TASK_ID` for a task that failed to launch.",
    }
    MODAL_SECRET_MISSING = "E405" "MODAL_SECRET_MISSING" {
        what: "A Modal secret a sandbox needs does not exist, or lacks a key.",
        why: "Sandboxes read `ANTHROPIC_API_KEY` from a named Modal secret (`modal.secret_name`, default `anthropic-api-key`, which must hold that key); Parhelia never ships your local key. Secrets named by `--secret` or `modal.secrets` must exist in the Modal workspace too. The message names the secret.",
        recover: "Run `modal secret create anthropic-api-key ANTHROPIC_API_KEY=sk-ant-...` (or set `modal.secret_name`) and `parhelia modal setup`; for a secret of `--secret NAME` or `modal.secrets`, `modal secret create NAME KEY=VALUE`; then `parhelia task retry TASK_ID` for a task that failed to launch.",
    }

    CONTROL_ACCESS_DENIED = "E406" "CONTROL_ACCESS_DENIED" {
        what: "The coordinator refused a control request.",
        why: "Only the user who runs the coordinator, from outside every session sandbox and holding the control token (`coordinator.token`, next to `coordinator.sock`, rewritten at each coordinator start), may drive it. The caller was another user, a process inside a session sandbox, or presented no or a stale token.",
        recover: "Run `parhelia` as the coordinator's user from your own shell (not from inside a session). If the coordinator was restarted by hand meanwhile, run the command again.",
    }
    MCP_TOKEN_REQUIRED = "E410" "MCP_TOKEN_REQUIRED" {
        what: "The MCP server would listen beyond this machine without a bearer token.",
        why: "`parhelia mcp-server --http ADDR` serves every Parhelia operation (tasks, checkpoints, budget) to whoever can reach ADDR; on a non-loopback address it requires a bearer token (`PARHELIA_MCP_TOKEN`) that every request must carry, and none was set. Requests without the token are refused with HTTP 401 and this code.",
        recover: "Set `PARHELIA_MCP_TOKEN` to a long random secret (e.g. `openssl rand -hex 32`) and send it as `Authorization: Bearer TOKEN`, or listen on 127.0.0.1.",
    }
    UI_ACCESS_DENIED = "E411" "UI_ACCESS_DENIED" {
        what: "The dashboard refused a request, or would not start.",
        why: "`parhelia ui` serves only loopback, and only to its own page: a request needs the per-user token (the URL `parhelia ui` prints, traded for a cookie), a `Host` naming the server on loopback (not a DNS-rebound name), and, to change anything or open a terminal, an `Origin` of the dashboard itself. It refused a request that lacked one of these, or a non-loopback address, or a token file (`ui.token` in the state directory) that is a link or readable by others.",
        recover: "Open the exact URL `parhelia ui` printed (it carries the token) in a browser on this machine; from another machine, use an SSH tunnel (`ssh -L 8780:127.0.0.1:8780 HOST`) and open it there. For a token file it refused, remove `ui.token` and run `parhelia ui` again.",
    }

    // E5xx: infrastructure.
    INFRASTRUCTURE_ERROR = "E500" "INFRASTRUCTURE_ERROR" {
        what: "The infrastructure failed.",
        why: "A backend, process or file operation Parhelia depends on failed.",
        recover: "Look at `.parhelia/coordinator.log` for details and try again.",
    }
    CLAUDE_CODE_NOT_INSTALLED = "E501" "CLAUDE_CODE_NOT_INSTALLED" {
        what: "Claude Code could not be found or started.",
        why: "`claude` is not on PATH (or `$PARHELIA_CLAUDE_BIN` names a file that is missing or not executable).",
        recover: "Install Claude Code (`npm install -g @anthropic-ai/claude-code`) or set `PARHELIA_CLAUDE_BIN` to the `claude` binary.",
    }
    AGENT_FAILED_TO_START = "E502" "AGENT_FAILED_TO_START" {
        what: "The session's agent did not start.",
        why: "`parhelia-agent` is missing, exited at once, or did not announce its endpoint in time.",
        recover: "Read `containers/<container-id>/runtime/agent.log` in the state directory (it says why the agent stopped); if the agent lives elsewhere, set `PARHELIA_AGENT_BIN` and restart the coordinator (`parhelia coordinator stop`; the next command starts it with your environment), then `parhelia task retry TASK_ID`.",
    }
    AGENT_UNREACHABLE = "E503" "AGENT_UNREACHABLE" {
        what: "The session's agent cannot be reached.",
        why: "The agent process is gone (killed, machine restarted) or its endpoint stopped answering.",
        recover: "Check `parhelia task show TASK_ID` and the agent's log (`containers/<container-id>/runtime/agent.log` in the state directory); a lost session keeps its work up to its latest checkpoint: `parhelia session recover SESSION_ID` shows which and resumes it.",
    }
    COORDINATOR_UNAVAILABLE = "E504" "COORDINATOR_UNAVAILABLE" {
        what: "The coordinator is not answering.",
        why: "It could not be started (it exited at once: the message quotes the error it logged), or one holds the state directory but does not answer on its socket (stopped with Ctrl-Z or SIGSTOP, or hung), so no other can start.",
        recover: "Read `.parhelia/coordinator.log` (or run `parhelia coordinator run` in the foreground) to see why it stops, and fix what it names; a coordinator that does not answer is ended by `parhelia coordinator stop`. Then run your command again: it starts a new coordinator.",
    }
    MODEL_API_FAILED = "E505" "MODEL_API_FAILED" {
        what: "The model API kept failing.",
        why: "The API returned server errors, 429 or overloaded after all of Claude Code's retries.",
        recover: "Try again later: `parhelia resume SESSION_ID -m \"go on\"` continues with the work kept; raise `CLAUDE_CODE_MAX_RETRIES` only when Claude Code did retry (the events show `retry` lines) and the API asked for no pause.",
    }
    BACKEND_UNAVAILABLE = "E506" "BACKEND_UNAVAILABLE" {
        what: "The backend is known but not available.",
        why: "This build does not have the backend yet, or it is not configured.",
        recover: "Use `--backend local`.",
    }
    STATE_UNAVAILABLE = "E507" "STATE_UNAVAILABLE" {
        what: "The state directory or its database cannot be used.",
        why: "It is not writable, is corrupt, or was written by a newer Parhelia.",
        recover: "Check the permissions of the `.parhelia/` directory in use, or upgrade Parhelia.",
    }

    ISOLATION_UNAVAILABLE = "E508" "ISOLATION_UNAVAILABLE" {
        what: "Bubblewrap isolation was requested but cannot be used.",
        why: "`local.isolation` is `required` (or `bwrap`), and `bwrap` is not installed or cannot create a sandbox on this machine (user namespaces disabled).",
        recover: "Install bubblewrap (`apt-get install bubblewrap`), or run without isolation: `isolation = \"none\"` (or `\"auto\"`) under `[local]` in `.parhelia/config.toml`, or `PARHELIA_ISOLATION=none` in the environment you run `parhelia` from. Then run `parhelia coordinator stop`: the running coordinator read its environment and probed bubblewrap when it started; the next command starts one that sees the change.",
    }
    STATE_DIR_INSECURE = "E509" "STATE_DIR_INSECURE" {
        what: "The state directory is not private.",
        why: "The `.parhelia/` directory in use (or one of its `sessions/`, `containers/`) is owned by another user, is not a directory, or its mode cannot be narrowed to 0700; it would hold session secrets (the database and its WAL), so nothing is written there.",
        recover: "Use a state directory you own (`--state-dir`, `PARHELIA_HOME`), or fix it with `chown` and `chmod 700`.",
    }
    MODAL_SDK_MISSING = "E510" "MODAL_SDK_MISSING" {
        what: "The Modal Python SDK is missing or not the pinned version.",
        why: "The modal backend drives Modal through its official Python SDK; `python3 -c 'import modal'` failed, or its version is not the one Parhelia is tested with.",
        recover: "Run `pip install modal==1.6.4` for the Python that `modal.python` names (default `python3`), then `parhelia modal setup`.",
    }
    MODAL_BRIDGE_FAILED = "E511" "MODAL_BRIDGE_FAILED" {
        what: "The Modal bridge failed.",
        why: "The bridge process that talks to Modal exited, answered something unexpected, or Modal raised an error Parhelia does not classify; the message carries Modal's own text.",
        recover: "Run `parhelia modal setup` to check the installation (it starts a new bridge); the coordinator log has the bridge's stderr. Then try again: `parhelia task retry TASK_ID` for a task that failed to launch.",
    }
    MODAL_TIMEOUT = "E512" "MODAL_TIMEOUT" {
        what: "A Modal call did not finish in time.",
        why: "Modal did not answer before the call's deadline (a scarce GPU can take many minutes to schedule; tunnels take a while to open).",
        recover: "Retry (`parhelia task retry TASK_ID`); for GPU tasks consider another `--gpu` type. A sandbox Modal creates after the deadline is not used: `parhelia cleanup` lists it as an orphan and `parhelia cleanup --terminate` ends it.",
    }
    MODAL_NO_CAPACITY = "E513" "MODAL_NO_CAPACITY" {
        what: "Modal has no capacity for the request.",
        why: "No machine with the requested GPU (or CPU and memory) could be scheduled (`ResourceExhaustedError`).",
        recover: "Retry later, or choose another GPU type with `--gpu` (e.g. `L40S` instead of `H100`).",
    }
    DATABASE_ROLLED_BACK = "E514" "DATABASE_ROLLED_BACK" {
        what: "The database lost commits it had made: it is behind the generation recorded beside it.",
        why: "`parhelia.db` is at an older generation than `parhelia.db-generation` says it reached: its write-ahead log (`-wal`) was truncated or deleted, an older copy of the file was restored, or a fresh file replaced it. SQLite's own integrity check cannot see this: the file is consistent, only older.",
        recover: "Nothing to do for running sessions: the coordinator re-created the rows of every live container from the record and re-reads their events from the agents. Tasks that had ended after the lost commits may be missing or show an older state; `parhelia events list --type database_rolled_back` says what was rebuilt. Find why the WAL was lost (a copy or backup tool that skips `-wal`, a full disk).",
    }
    JOURNAL_GAP = "E515" "JOURNAL_GAP" {
        what: "Events a session journaled are lost: nobody can read them back.",
        why: "The container's journal file was truncated, overwritten or deleted, and neither the live agent (which serves what it still holds from its open file) nor the session's volume has those events. The stream continues after the gap, which is recorded as a `journal_gap` event with its sequence numbers.",
        recover: "Nothing to do for the session, which keeps running; its recorded cost never goes down. What the lost events said (tool calls, text) is gone; results and checkpoints are unaffected. Find what touched the session's volume.",
    }
    DISK_FULL = "E516" "DISK_FULL" {
        what: "The disk ran out of space.",
        why: "The filesystem holding the session's workspace, its journal or checkpoint store, or the coordinator's database has no space left. The session was stopped as interrupted; everything written before (earlier events and checkpoints) is intact.",
        recover: "Free space (`df -h` on the state directory; `parhelia checkpoint list` shows store sizes, retention settings prune), then `parhelia resume SESSION_ID`.",
    }
    SESSION_PROCESSES_SURVIVED = "E517" "SESSION_PROCESSES_SURVIVED" {
        what: "Processes of a session whose agent is gone could not all be ended.",
        why: "The reconciler found processes of a local session still running after its agent died (a killed agent's tmux server, Claude Code or its tools), checkpointed the workspace and signalled every one of them (SIGKILL), but some are still alive: they are stuck in the kernel (uninterruptible I/O), or belong to another user.",
        recover: "`parhelia events list --type session_processes_ended` names the pids; look at them (`ps -o pid,stat,cmd -p PID`) and end them yourself, then `parhelia cleanup`.",
    }
    ATTACH_CONNECTION_LOST = "E597" "ATTACH_CONNECTION_LOST" {
        what: "An attach lost its connection to the session's agent and could not get it back.",
        why: "The network between this machine and the agent (a Modal tunnel, a proxy, a VPN) dropped the connection, or stopped carrying it (keepalive pings unanswered for 10 s), and eight reconnect tries, over about 20 s, failed too; the message quotes the last try's error. The database still listed the session as running when the attach gave up, and a dropped attach does not stop it.",
        recover: "Attach again once the network is back: `parhelia session attach SESSION_ID` (`parhelia session logs SESSION_ID` shows its screen without a terminal). `parhelia task show TASK_ID` says whether the session still runs; one that was lost meanwhile keeps its work up to its latest checkpoint: `parhelia session recover SESSION_ID`.",
    }

    CHECKPOINT_IO_FAILED = "E520" "CHECKPOINT_IO_FAILED" {
        what: "A checkpoint could not be read or written.",
        why: "The session's volume failed for a reason other than a full disk (E516) or damage (E620): it is read-only or failing, a file is unreadable, or permissions changed. The message names the file and the system's error.",
        recover: "Fix what the message names (remount the volume read-write, restore the permissions), then try again: `parhelia checkpoint create SESSION_ID`, or the session's next checkpoint. Earlier checkpoints are untouched.",
    }
    AGENT_DEBUG_BUILD = "E598" "AGENT_DEBUG_BUILD" {
        what: "The agent shipped to the Modal image is a debug build.",
        why: "The `parhelia-agent` baked into the Modal session image was built without `--release` (debug assertions, no optimisation): it works, but it is several times larger to upload and slower at checkpoints. A warning: the image is built with it.",
        recover: "Build the release agent with `cargo build --release -p parhelia-agent` (beside a target/debug `parhelia`, target/release/parhelia-agent is then taken by itself) or point `modal.agent_bin` at a release build, then `parhelia modal setup`.",
    }
    AGENT_BINARY_UNFIT = "E599" "AGENT_BINARY_UNFIT" {
        what: "The agent binary cannot run in the Modal session image.",
        why: "The local `parhelia-agent` baked into the Modal image (Debian bookworm, glibc 2.36) is not an x86-64 Linux ELF, needs a newer glibc than the image has (its `.gnu.version_r` names the versions it needs), or does not answer `build-info` as a `parhelia-agent`; the message says which.",
        recover: "Build the agent for the image: `cargo build --release -p parhelia-agent` on Debian bookworm (or `--target x86_64-unknown-linux-musl` for a static build), point `modal.agent_bin` at it, then `parhelia modal setup`.",
    }

    // E6xx: operations.
    CLAUDE_CODE_ERROR_RESULT = "E600" "CLAUDE_CODE_ERROR_RESULT" {
        what: "Claude Code finished with an error result.",
        why: "Claude Code ended the run with an error (for example `error_max_turns` or `error_during_execution`).",
        recover: "Read the events with `parhelia task watch TASK_ID`; the advice under the error names what to do for its cause (turn limit, a refused request, a failed tool).",
    }
    SESSION_CANCELLED = "E601" "SESSION_CANCELLED" {
        what: "The session was stopped on request.",
        why: "Someone asked for the session to stop before it finished.",
        recover: "The work up to the final checkpoint is kept: `parhelia resume SESSION_ID -m \"go on\"` continues it (`parhelia task retry TASK_ID` starts over).",
    }
    SESSION_INTERRUPTED = "E602" "SESSION_INTERRUPTED" {
        what: "The session was interrupted.",
        why: "Claude Code died without a result, or its container went away.",
        recover: "Resume it from its latest checkpoint: `parhelia session recover SESSION_ID` shows which one and runs the resume.",
    }
    ILLEGAL_TRANSITION = "E603" "ILLEGAL_TRANSITION" {
        what: "The task cannot move to the requested state.",
        why: "The task's state machine does not allow this change (for example, a completed task cannot start running again).",
        recover: "Check the task's current status with `parhelia task show TASK_ID`.",
    }
    COORDINATOR_ALREADY_RUNNING = "E604" "COORDINATOR_ALREADY_RUNNING" {
        what: "A coordinator is already running for this state directory.",
        why: "Only one coordinator may own a state directory; another process holds `coordinator.lock`.",
        recover: "Use the running one (`parhelia coordinator status`), or stop it first with `parhelia coordinator stop`.",
    }
    TASK_STILL_ACTIVE = "E605" "TASK_STILL_ACTIVE" {
        what: "The task has not ended.",
        why: "Only ended tasks (completed, failed, cancelled, interrupted) whose containers are gone can be deleted.",
        recover: "Cancel it first with `parhelia task cancel TASK_ID`, or wait for it to end.",
    }
    CHECKPOINT_INCOMPLETE = "E606" "CHECKPOINT_INCOMPLETE" {
        what: "The checkpoint has no conversation, so the session cannot continue from it.",
        why: "It was taken without the Claude Code conversation while the session has one (a safety checkpoint written by an older agent before a restore); Claude Code would start with \"No conversation found\".",
        recover: "Nothing was changed. Resume or roll back to another checkpoint (`parhelia checkpoint list SESSION_ID`); plain `parhelia resume SESSION_ID` picks the newest restorable one and says which it skipped.",
    }
    CHECKPOINT_CORRUPT = "E620" "CHECKPOINT_CORRUPT" {
        what: "The checkpoint is damaged.",
        why: "A checksum did not match: a layer or the manifest was truncated or altered on the volume.",
        recover: "Nothing was changed. `parhelia checkpoint verify --all` names the damaged files and the checkpoints each affects; `parhelia checkpoint repair --session SESSION_ID` rewrites them from intact copies (the workspace, a mirror, another store); checkpoints that do not share the damaged data still restore.",
    }
    CHECKPOINT_UNSAFE = "E621" "CHECKPOINT_UNSAFE" {
        what: "The checkpoint contains an unsafe entry.",
        why: "An entry would write outside the workspace (`..`, an absolute path, a link leading out) or is a device file.",
        recover: "Nothing was written. Do not restore this checkpoint: pick another (`parhelia checkpoint list SESSION_ID`; plain `parhelia resume SESSION_ID` passes over it and names it), and report how it was produced.",
    }
    CHECKPOINT_BUSY = "E622" "CHECKPOINT_BUSY" {
        what: "The checkpoint store is busy.",
        why: "Another process held the session's checkpoint store lock (a checkpoint, a prune, a `checkpoint verify` or `repair` was running; the message names it when the system can tell) for longer than `checkpoint.lock_wait_seconds` (default 60 s). Nothing was changed.",
        recover: "Let the process the message names finish (or end it if it is stuck), then run the same command again; to wait longer for it, raise `checkpoint.lock_wait_seconds` in `.parhelia/config.toml`.",
    }
    CHECKPOINT_QUOTA = "E623" "CHECKPOINT_QUOTA" {
        what: "The checkpoint store is over its quota.",
        why: "A session's checkpoint store is still larger than `checkpoint.max_store_mb` after pruning what the retention policy allows; the newest checkpoint is kept (a session's latest state is never dropped for space).",
        recover: "Raise `checkpoint.max_store_mb` (or lower `checkpoint.keep_last`) in `.parhelia/config.toml`, run `parhelia coordinator reload`; they apply from the session's next launch (once it has ended: `parhelia resume SESSION_ID -m \"go on\"`), whose checkpoints prune to them. `parhelia task show TASK_ID` stops warning once the store fits.",
    }
    CHECKPOINT_LIMIT = "E624" "CHECKPOINT_LIMIT" {
        what: "The checkpoint is larger than a restore or diff is allowed to handle.",
        why: "It declares more file bytes, more entries, longer paths than the caps allow (a path under the target longer than the system accepts), or reading it took longer than allowed; checkpoint stores are written by sessions, so their sizes are capped.",
        recover: "Nothing was changed when the size was known up front. Pick another checkpoint (`parhelia checkpoint list SESSION_ID`), restore into a directory with a shorter path, or, if the checkpoint is genuine, report it: the caps are far above ordinary workspaces.",
    }
    CHECKPOINT_UNREPAIRABLE = "E625" "CHECKPOINT_UNREPAIRABLE" {
        what: "Some damaged checkpoints could not be repaired.",
        why: "No source holds an intact copy of what they lost: not the session's workspace, not a mirror of its store, not another session's store.",
        recover: "They stay reported as damaged and `resume` skips them; resume from an older checkpoint that verifies (`parhelia checkpoint verify --session SESSION_ID`). The damaged files are kept; run `parhelia checkpoint repair` again if an intact copy turns up.",
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashSet;

    #[test]
    fn every_code_is_unique_well_formed_and_has_text() {
        let mut codes = HashSet::new();
        let mut names = HashSet::new();
        for c in ALL {
            assert!(codes.insert(c.code), "duplicate code {}", c.code);
            assert!(names.insert(c.name), "duplicate name {}", c.name);
            assert_ne!(exit_status_for_code(c.code), 1, "malformed code {}", c.code);
            assert!(
                c.name
                    .chars()
                    .all(|ch| ch.is_ascii_uppercase() || ch == '_'),
                "{}",
                c.name
            );
            for (field, text) in [("what", c.what), ("why", c.why), ("recover", c.recover)] {
                assert!(text.len() > 10, "{} has no `{field}` text", c.code);
                assert!(
                    text.ends_with('.'),
                    "{} `{field}` is not a sentence",
                    c.code
                );
            }
        }
    }

    #[test]
    fn codes_the_contract_and_the_cli_rely_on_exist() {
        for code in [
            "E101", "E102", "E200", "E201", "E202", "E300", "E401", "E501", "E502", "E503", "E504",
            "E505", "E600", "E601", "E602",
        ] {
            assert!(lookup(code).is_some(), "{code} is missing");
        }
        assert_eq!(lookup("e201"), Some(&TASK_NOT_FOUND));
        assert_eq!(lookup_or_family("E201"), TASK_NOT_FOUND);
        assert_eq!(lookup_or_family("E299"), NOT_FOUND);
        assert_eq!(lookup_or_family("E699"), CLAUDE_CODE_ERROR_RESULT);
        assert_eq!(lookup_or_family("junk"), INFRASTRUCTURE_ERROR);
    }

    #[test]
    fn exit_status_follows_the_family() {
        let cases = [
            ("E101", 2),
            ("E201", 3),
            ("E300", 4),
            ("E401", 5),
            ("E597", 6),
            ("E600", 7),
            ("E7", 1),
            ("X101", 1),
            ("", 1),
        ];
        for (code, status) in cases {
            assert_eq!(exit_status_for_code(code), status, "{code}");
        }
    }
}
