//! Finding the programs a launch needs: Claude Code (`claude`) and the agent
//! (`parhelia-agent`).
//!
//! Claude Code: `$PARHELIA_CLAUDE_BIN` if set (a path, or a name looked up on
//! PATH), else `claude` on PATH; always returned as an absolute path. Missing
//! or not executable is E501.
//!
//! The agent: an explicit path (`$PARHELIA_AGENT_BIN`), else
//! `parhelia-agent` next to the running `parhelia` executable, else on PATH.
//! Missing is E502.
//!
//! The agent shipped to Modal ([`modal_agent_bin`], [`inspect_agent`]):
//! `modal.agent_bin`, else the one beside `parhelia`, preferring a release
//! build over a debug one; checked before it is baked into the image (an
//! x86-64 Linux ELF needing no newer glibc than the image's, by its
//! `.gnu.version_r`; E599 otherwise) and asked `build-info` for its version
//! (the image's tag) and build profile (a debug build is shipped with the
//! coded warning E598).

use std::collections::HashMap;
use std::ffi::OsStr;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::sync::{Mutex, OnceLock};
use std::time::{Duration, Instant, SystemTime};

use crate::error::CodedError;
use crate::error_codes;

pub const CLAUDE_BIN_NAME: &str = "claude";
pub const AGENT_BIN_NAME: &str = "parhelia-agent";

/// True for an existing regular file (after symlinks) with an execute bit.
pub fn is_executable(path: &Path) -> bool {
    std::fs::metadata(path).is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
}

/// Looks `name` up on a PATH value; the result is absolute.
pub fn find_on_path(name: &str, path_var: Option<&OsStr>, cwd: &Path) -> Option<PathBuf> {
    // An empty entry means the current directory to `which` (as to sh); we never search it.
    let dirs: Vec<PathBuf> = std::env::split_paths(path_var?)
        .filter(|dir| !dir.as_os_str().is_empty())
        .collect();
    if dirs.is_empty() {
        return None;
    }
    let path_var = std::env::join_paths(dirs).ok()?;
    which::which_in(name, Some(path_var), cwd)
        .ok()
        .filter(|found| is_executable(found))
}

/// Resolves Claude Code from an override and a PATH value.
pub fn resolve_claude_bin(
    override_value: Option<&OsStr>,
    path_var: Option<&OsStr>,
    cwd: &Path,
) -> Result<PathBuf, CodedError> {
    let not_installed =
        |what: String| CodedError::new(error_codes::CLAUDE_CODE_NOT_INSTALLED, what);
    match override_value.filter(|v| !v.is_empty()) {
        Some(value) => {
            let given = PathBuf::from(value);
            if given.components().count() > 1 || given.is_absolute() {
                let absolute = if given.is_absolute() {
                    given
                } else {
                    cwd.join(given)
                };
                if is_executable(&absolute) {
                    Ok(absolute)
                } else {
                    Err(not_installed(format!(
                        "claude code not found: PARHELIA_CLAUDE_BIN={} is not an executable file",
                        absolute.display()
                    )))
                }
            } else {
                let name = given.to_string_lossy();
                find_on_path(&name, path_var, cwd).ok_or_else(|| {
                    not_installed(format!(
                        "claude code not found: PARHELIA_CLAUDE_BIN={name} is not on PATH"
                    ))
                })
            }
        }
        None => find_on_path(CLAUDE_BIN_NAME, path_var, cwd).ok_or_else(|| {
            not_installed("claude code not found: `claude` is not on PATH".to_string())
        }),
    }
}

/// Resolves the agent binary.
pub fn resolve_agent_bin(
    explicit: Option<&Path>,
    current_exe: Option<&Path>,
    path_var: Option<&OsStr>,
    cwd: &Path,
) -> Result<PathBuf, CodedError> {
    let failed = |what: String| CodedError::new(error_codes::AGENT_FAILED_TO_START, what);
    if let Some(path) = explicit.filter(|p| !p.as_os_str().is_empty()) {
        let absolute = if path.is_absolute() {
            path.to_path_buf()
        } else {
            cwd.join(path)
        };
        return if is_executable(&absolute) {
            Ok(absolute)
        } else {
            Err(failed(format!(
                "agent binary not found: PARHELIA_AGENT_BIN={} is not an executable file",
                absolute.display()
            )))
        };
    }
    if let Some(sibling) = current_exe
        .and_then(Path::parent)
        .map(|dir| dir.join(AGENT_BIN_NAME))
        && is_executable(&sibling)
    {
        return Ok(sibling);
    }
    find_on_path(AGENT_BIN_NAME, path_var, cwd).ok_or_else(|| {
        failed(format!(
            "agent binary not found: no {AGENT_BIN_NAME} next to parhelia or on PATH"
        ))
    })
}

/// The session image's base (`images/Dockerfile`'s `FROM`) and the newest
/// glibc it has: Debian bookworm ships glibc 2.36.
pub const IMAGE_BASE: &str = "debian:bookworm-slim";
pub const IMAGE_GLIBC: (u32, u32) = (2, 36);

/// What `parhelia-agent build-info` prints.
#[derive(Clone, Debug, PartialEq, Eq, serde::Deserialize)]
pub struct BuildInfo {
    pub name: String,
    pub version: String,
    /// `debug` (built with debug assertions, as `cargo build` without
    /// `--release`) or `release`.
    pub profile: String,
    pub arch: String,
    pub os: String,
}

/// The agent binary to bake into the Modal image, checked.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ShippedAgent {
    pub path: PathBuf,
    pub bytes: u64,
    /// The newest glibc symbol version it needs (`None`: static, or no glibc).
    pub glibc: Option<(u32, u32)>,
    pub info: BuildInfo,
}

impl ShippedAgent {
    /// The coded warning a debug build is shipped with (`None` for a release
    /// build).
    pub fn warning(&self) -> Option<String> {
        (self.info.profile != "release").then(|| {
            format!(
                "{}: {} is a {} build ({} MB): build the release agent (`cargo build --release -p parhelia-agent`), which is preferred over target/debug, or set modal.agent_bin",
                error_codes::AGENT_DEBUG_BUILD.code,
                self.path.display(),
                self.info.profile,
                self.bytes.div_ceil(1 << 20)
            )
        })
    }

    /// One line for `modal setup`: path, version, build, size, glibc.
    pub fn describe(&self) -> String {
        let glibc = match self.glibc {
            Some((major, minor)) => format!("needs glibc {major}.{minor}"),
            None => "no glibc symbol versions (static)".to_string(),
        };
        format!(
            "{} (parhelia-agent {}, {} build, {} MB, {glibc}; the image has {}.{})",
            self.path.display(),
            self.info.version,
            self.info.profile,
            self.bytes.div_ceil(1 << 20),
            IMAGE_GLIBC.0,
            IMAGE_GLIBC.1
        )
    }
}

/// Which local agent binary ships to Modal: `modal.agent_bin` when set (as
/// given); else `parhelia-agent` beside the running `parhelia`, except that
/// beside a `target/debug/parhelia` the release build
/// `target/release/parhelia-agent` is taken when there is one.
pub fn modal_agent_bin(
    explicit: Option<&Path>,
    current_exe: Option<&Path>,
) -> Result<PathBuf, CodedError> {
    if let Some(path) = explicit.filter(|p| !p.as_os_str().is_empty()) {
        return Ok(path.to_path_buf());
    }
    let dir = current_exe.and_then(Path::parent);
    let release = dir
        .filter(|d| d.file_name().is_some_and(|n| n == "debug"))
        .and_then(Path::parent)
        .map(|target| target.join("release").join(AGENT_BIN_NAME))
        .filter(|p| is_executable(p));
    let beside = dir
        .map(|d| d.join(AGENT_BIN_NAME))
        .filter(|p| is_executable(p));
    release.or(beside).ok_or_else(|| {
        CodedError::new(
            error_codes::AGENT_FAILED_TO_START,
            "no parhelia-agent to bake into the Modal image: build it (`cargo build --release -p parhelia-agent`) or set modal.agent_bin",
        )
    })
}

/// Refuses (E599) what cannot run in the image.
fn unfit(path: &Path, why: impl std::fmt::Display) -> CodedError {
    CodedError::new(
        error_codes::AGENT_BINARY_UNFIT,
        format!(
            "{} cannot run in the Modal session image ({IMAGE_BASE}, glibc {}.{}): {why}",
            path.display(),
            IMAGE_GLIBC.0,
            IMAGE_GLIBC.1
        ),
    )
}

/// The newest `GLIBC_2.N[.M]` version an x86-64 Linux ELF file's
/// `.gnu.version_r` names (`None`: it names none, a static binary); an error
/// says why the file is no such ELF.
pub fn newest_glibc(bytes: &[u8]) -> Result<Option<(u32, u32)>, String> {
    use object::read::elf::FileHeader;
    // ELF, 64-bit, little-endian: said first in words, as the parser's errors are terse.
    if bytes.len() < 20 || &bytes[..4] != b"\x7fELF" {
        return Err("it is not an ELF file".into());
    }
    if bytes[4] != 2 || bytes[5] != 1 {
        return Err("it is not a 64-bit little-endian ELF file".into());
    }
    let header = object::elf::FileHeader64::<object::Endianness>::parse(bytes)
        .map_err(|e| format!("its ELF header is unreadable ({e})"))?;
    let endian = header
        .endian()
        .map_err(|e| format!("its ELF header is unreadable ({e})"))?;
    if header.e_machine(endian) != object::elf::EM_X86_64 {
        return Err("it is not built for x86-64".into());
    }
    let unreadable = |e: object::read::Error| format!("its version records are unreadable ({e})");
    let sections = header.sections(endian, bytes).map_err(unreadable)?;
    let Some((mut needs, link)) = sections.gnu_verneed(endian, bytes).map_err(unreadable)? else {
        return Ok(None);
    };
    let strings = sections.strings(endian, bytes, link).map_err(unreadable)?;
    let mut newest = None;
    while let Some((_, mut versions)) = needs.next().map_err(unreadable)? {
        while let Some(version) = versions.next().map_err(unreadable)? {
            let name = version.name(endian, strings).map_err(unreadable)?;
            if let Some(v) = glibc_version(name)
                && newest.is_none_or(|n| v > n)
            {
                newest = Some(v);
            }
        }
    }
    Ok(newest)
}

/// `GLIBC_2.34` → (2, 34); `GLIBC_2.2.5` → (2, 2); anything else (e.g.
/// `GLIBC_PRIVATE`, `GCC_3.0`) → `None`.
fn glibc_version(name: &[u8]) -> Option<(u32, u32)> {
    let rest = std::str::from_utf8(name.strip_prefix(b"GLIBC_")?).ok()?;
    let mut parts = rest.split('.');
    let major = parts.next()?.parse().ok()?;
    let minor = parts.next()?.parse().ok()?;
    Some((major, minor))
}

/// The ELF checks of [`inspect_agent`] on the file's bytes: the newest glibc
/// it needs, or E599.
pub fn check_for_image(path: &Path, bytes: &[u8]) -> Result<Option<(u32, u32)>, CodedError> {
    let glibc = newest_glibc(bytes).map_err(|why| unfit(path, why))?;
    match glibc {
        Some(needed) if needed > IMAGE_GLIBC => Err(unfit(
            path,
            format!(
                "it needs glibc {}.{} (its .gnu.version_r)",
                needed.0, needed.1
            ),
        )),
        _ => Ok(glibc),
    }
}

/// Checks the agent at `path` for the image and asks it what it is (once per
/// version of the file: path, size and modification time; the answer is
/// kept for the life of the process). E599 when it cannot run in the image
/// or does not answer `build-info` as a `parhelia-agent`.
pub fn inspect_agent(path: &Path) -> Result<ShippedAgent, CodedError> {
    type Key = (PathBuf, u64, Option<SystemTime>);
    static SEEN: OnceLock<Mutex<HashMap<Key, ShippedAgent>>> = OnceLock::new();
    let meta = std::fs::metadata(path).map_err(|e| {
        CodedError::new(
            error_codes::AGENT_FAILED_TO_START,
            format!("cannot read the agent binary {}: {e}", path.display()),
        )
    })?;
    let key = (path.to_path_buf(), meta.len(), meta.modified().ok());
    let seen = SEEN.get_or_init(Default::default);
    if let Some(known) = seen.lock().unwrap_or_else(|e| e.into_inner()).get(&key) {
        return Ok(known.clone());
    }
    let bytes = std::fs::read(path).map_err(|e| {
        CodedError::new(
            error_codes::AGENT_FAILED_TO_START,
            format!("cannot read the agent binary {}: {e}", path.display()),
        )
    })?;
    let glibc = check_for_image(path, &bytes)?;
    drop(bytes);
    let info = build_info(path)?;
    let agent = ShippedAgent {
        path: path.to_path_buf(),
        bytes: meta.len(),
        glibc,
        info,
    };
    if let Some(warning) = agent.warning() {
        tracing::warn!("{warning}");
    }
    seen.lock()
        .unwrap_or_else(|e| e.into_inner())
        .insert(key, agent.clone());
    Ok(agent)
}

/// Runs `path build-info` (at most 10 s) and reads its answer.
fn build_info(path: &Path) -> Result<BuildInfo, CodedError> {
    let mut child = std::process::Command::new(path)
        .arg("build-info")
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::null())
        .spawn()
        .map_err(|e| unfit(path, format!("it does not start here ({e})")))?;
    let deadline = Instant::now() + Duration::from_secs(10);
    let status = loop {
        match child.try_wait() {
            Ok(Some(status)) => break status,
            Ok(None) if Instant::now() < deadline => std::thread::sleep(Duration::from_millis(10)),
            _ => {
                let _ = child.kill();
                let _ = child.wait();
                return Err(unfit(path, "`build-info` did not answer within 10 s"));
            }
        }
    };
    let mut out = String::new();
    if let Some(mut stdout) = child.stdout.take() {
        use std::io::Read;
        let _ = stdout.by_ref().take(64 * 1024).read_to_string(&mut out);
    }
    let info: BuildInfo = serde_json::from_str(out.trim())
        .ok()
        .filter(|_| status.success())
        .ok_or_else(|| {
            unfit(
                path,
                format!(
                    "it does not answer `build-info` as a parhelia-agent of this version does (exit {status})"
                ),
            )
        })?;
    if info.name != AGENT_BIN_NAME {
        return Err(unfit(path, format!("it says it is {:?}", info.name)));
    }
    Ok(info)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn executable(dir: &Path, name: &str) -> PathBuf {
        let path = dir.join(name);
        std::fs::write(&path, "#!/bin/sh\n").unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755)).unwrap();
        path
    }

    #[test]
    fn claude_resolution() {
        let tmp = tempfile::tempdir().unwrap();
        let bin = tmp.path().join("bin");
        std::fs::create_dir(&bin).unwrap();
        let claude = executable(&bin, "claude");
        let other = executable(tmp.path(), "my-claude");
        std::fs::write(tmp.path().join("not-exec"), "").unwrap();
        let path = bin.as_os_str();
        let cwd = tmp.path();

        assert_eq!(resolve_claude_bin(None, Some(path), cwd).unwrap(), claude);
        assert_eq!(
            resolve_claude_bin(Some(other.as_os_str()), None, cwd).unwrap(),
            other
        );
        assert_eq!(
            resolve_claude_bin(Some(OsStr::new("./my-claude")), None, cwd).unwrap(),
            cwd.join("./my-claude")
        );
        assert_eq!(
            resolve_claude_bin(Some(OsStr::new("claude")), Some(path), cwd).unwrap(),
            claude
        );
        for bad in ["/nonexistent", "not-exec-but/x"] {
            let err = resolve_claude_bin(Some(OsStr::new(bad)), Some(path), cwd).unwrap_err();
            assert_eq!(err.code.code, "E501");
        }
        let err = resolve_claude_bin(None, Some(OsStr::new("/nowhere")), cwd).unwrap_err();
        assert_eq!(err.code.code, "E501");
        assert_eq!(
            resolve_claude_bin(None, None, cwd).unwrap_err().code.code,
            "E501"
        );
    }

    /// PATH lookup through `which` keeps the old rules: an empty entry (which sh, and
    /// `which`, read as the current directory) is never searched; a relative entry is
    /// taken from the current directory; a file without an execute bit is passed over.
    #[test]
    fn path_lookup_never_searches_the_current_directory_for_an_empty_entry() {
        let tmp = tempfile::tempdir().unwrap();
        let cwd = tmp.path();
        executable(cwd, "claude");
        let rel = cwd.join("rel");
        std::fs::create_dir(&rel).unwrap();
        for path in [":/nonexistent", "/nonexistent:", "/a::/b", ""] {
            assert_eq!(
                find_on_path("claude", Some(OsStr::new(path)), cwd),
                None,
                "{path:?}"
            );
        }
        let in_rel = executable(&rel, "claude");
        assert_eq!(
            find_on_path("claude", Some(OsStr::new("::rel")), cwd),
            Some(in_rel)
        );
        std::fs::write(rel.join("agent"), "").unwrap();
        assert_eq!(find_on_path("agent", Some(OsStr::new("rel")), cwd), None);
    }

    #[test]
    fn agent_resolution() {
        let tmp = tempfile::tempdir().unwrap();
        let exe_dir = tmp.path().join("target");
        std::fs::create_dir(&exe_dir).unwrap();
        let sibling = executable(&exe_dir, "parhelia-agent");
        let exe = exe_dir.join("parhelia");
        let cwd = tmp.path();
        assert_eq!(
            resolve_agent_bin(None, Some(&exe), None, cwd).unwrap(),
            sibling
        );
        let explicit = executable(tmp.path(), "fake-agent");
        assert_eq!(
            resolve_agent_bin(Some(&explicit), Some(&exe), None, cwd).unwrap(),
            explicit
        );
        let err =
            resolve_agent_bin(Some(Path::new("/nonexistent")), Some(&exe), None, cwd).unwrap_err();
        assert_eq!(err.code.code, "E502");
        let err =
            resolve_agent_bin(None, Some(&tmp.path().join("x/parhelia")), None, cwd).unwrap_err();
        assert_eq!(err.code.code, "E502");
    }

    #[test]
    fn the_release_agent_is_preferred_over_the_debug_one_beside_parhelia() {
        let tmp = tempfile::tempdir().unwrap();
        let debug = tmp.path().join("target/debug");
        let release = tmp.path().join("target/release");
        std::fs::create_dir_all(&debug).unwrap();
        std::fs::create_dir_all(&release).unwrap();
        let exe = debug.join("parhelia");
        // Nothing built: E502 with the build command.
        let err = modal_agent_bin(None, Some(&exe)).unwrap_err();
        assert_eq!(err.code.code, "E502");
        assert!(
            err.message
                .contains("cargo build --release -p parhelia-agent")
        );
        let beside = executable(&debug, AGENT_BIN_NAME);
        assert_eq!(modal_agent_bin(None, Some(&exe)).unwrap(), beside);
        let built = executable(&release, AGENT_BIN_NAME);
        assert_eq!(modal_agent_bin(None, Some(&exe)).unwrap(), built);
        // An installed parhelia (not in a `debug` directory) ships its sibling.
        let installed = tmp.path().join("bin");
        std::fs::create_dir_all(&installed).unwrap();
        let sibling = executable(&installed, AGENT_BIN_NAME);
        assert_eq!(
            modal_agent_bin(None, Some(&installed.join("parhelia"))).unwrap(),
            sibling
        );
        // modal.agent_bin wins, as given.
        let chosen = Path::new("/opt/agents/parhelia-agent");
        assert_eq!(modal_agent_bin(Some(chosen), Some(&exe)).unwrap(), chosen);
    }

    /// The glibc check reads `.gnu.version_r`: this test binary (built here, on
    /// the image's Debian release) fits; the same bytes with its newest
    /// version record renamed to GLIBC_2.99 are refused with E599.
    #[test]
    fn the_glibc_an_elf_needs_is_read_from_its_version_records() {
        let exe = std::env::current_exe().unwrap();
        let mut bytes = std::fs::read(&exe).unwrap();
        let newest = newest_glibc(&bytes).unwrap().expect("linked against glibc");
        assert!(newest >= (2, 2), "{newest:?}");
        assert_eq!(check_for_image(&exe, &bytes).unwrap(), Some(newest));
        // Rename every `GLIBC_2.<minor>` string of that version, keeping its length.
        let old = format!("GLIBC_{}.{}\0", newest.0, newest.1).into_bytes();
        let new = format!("GLIBC_2.{:0<width$}\0", 9, width = old.len() - 9).into_bytes();
        assert_eq!(old.len(), new.len());
        let mut renamed = 0;
        let mut i = 0;
        while let Some(pos) = bytes[i..].windows(old.len()).position(|w| w == old) {
            bytes[i + pos..i + pos + new.len()].copy_from_slice(&new);
            renamed += 1;
            i += pos + new.len();
        }
        assert!(renamed > 0);
        let wanted = glibc_version(&new[..new.len() - 1]).unwrap();
        assert!(wanted > IMAGE_GLIBC, "{wanted:?}");
        assert_eq!(newest_glibc(&bytes).unwrap(), Some(wanted));
        let err = check_for_image(&exe, &bytes).unwrap_err();
        assert_eq!(err.code.code, "E599");
        assert!(
            err.message
                .contains(&format!("it needs glibc {}.{}", wanted.0, wanted.1))
                && err.message.contains("glibc 2.36"),
            "{}",
            err.message
        );
    }

    #[test]
    fn what_is_no_x86_64_elf_is_refused_with_why() {
        let path = Path::new("/x/parhelia-agent");
        let refused = |bytes: &[u8]| {
            let err = check_for_image(path, bytes).unwrap_err();
            assert_eq!(err.code.code, "E599");
            err.message
        };
        assert!(refused(b"#!/bin/sh\necho hi\n").contains("not an ELF file"));
        let mut elf = vec![0u8; 64];
        elf[..4].copy_from_slice(b"\x7fELF");
        elf[4] = 1; // 32-bit
        elf[5] = 1;
        assert!(refused(&elf).contains("64-bit little-endian"));
        elf[4] = 2;
        elf[6] = 1; // EV_CURRENT
        elf[18] = 183; // EM_AARCH64
        assert!(refused(&elf).contains("x86-64"), "{}", refused(&elf));
        // A bare x86-64 header without sections: no version records, as a static binary.
        elf[18] = 62;
        assert_eq!(check_for_image(path, &elf).unwrap(), None);
    }

    #[test]
    fn glibc_version_names() {
        assert_eq!(glibc_version(b"GLIBC_2.34"), Some((2, 34)));
        assert_eq!(glibc_version(b"GLIBC_2.2.5"), Some((2, 2)));
        for other in [
            &b"GLIBC_PRIVATE"[..],
            b"GCC_3.0",
            b"GLIBC_2",
            b"",
            b"GLIBC_x.y",
        ] {
            assert_eq!(glibc_version(other), None);
        }
    }

    fn script(dir: &Path, name: &str, body: &str) -> PathBuf {
        let path = dir.join(name);
        std::fs::write(&path, format!("#!/bin/sh\n{body}\n")).unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755)).unwrap();
        path
    }

    #[test]
    fn build_info_is_asked_and_a_debug_build_is_shipped_with_a_coded_warning() {
        let tmp = tempfile::tempdir().unwrap();
        let answer = |profile: &str, name: &str| {
            format!(
                r#"[ "$1" = build-info ] && echo '{{"name":"{name}","version":"0.1.0","profile":"{profile}","arch":"x86_64","os":"linux"}}'"#
            )
        };
        let debug = script(tmp.path(), "debug", &answer("debug", "parhelia-agent"));
        let info = build_info(&debug).unwrap();
        assert_eq!(
            (info.version.as_str(), info.profile.as_str()),
            ("0.1.0", "debug")
        );
        let shipped = |info: BuildInfo| ShippedAgent {
            path: PathBuf::from("/t/target/debug/parhelia-agent"),
            bytes: 76 << 20,
            glibc: Some((2, 34)),
            info,
        };
        let warning = shipped(info.clone()).warning().unwrap();
        assert!(
            warning.starts_with("E598: /t/target/debug/parhelia-agent is a debug build (76 MB)")
                && warning.contains("cargo build --release -p parhelia-agent"),
            "{warning}"
        );
        let release = BuildInfo {
            profile: "release".into(),
            ..info
        };
        assert_eq!(shipped(release.clone()).warning(), None);
        assert_eq!(
            shipped(release).describe(),
            "/t/target/debug/parhelia-agent (parhelia-agent 0.1.0, release build, 76 MB, needs glibc 2.34; the image has 2.36)"
        );
        // Something else, an old agent without build-info, a hung one: E599.
        let other = script(tmp.path(), "other", &answer("release", "not-the-agent"));
        let old = script(
            tmp.path(),
            "old",
            "echo 'unrecognized subcommand' >&2; exit 2",
        );
        for path in [other, old] {
            let err = build_info(&path).unwrap_err();
            assert_eq!(err.code.code, "E599", "{}", err.message);
        }
    }

    /// The image whose glibc the agent is checked against is the Dockerfile's
    /// base, and the bridge ships that very file (`BRIDGE_FILES`).
    #[test]
    fn the_dockerfile_is_the_image_whose_glibc_is_checked() {
        let dockerfile = include_str!("../../images/Dockerfile");
        let from: Vec<&str> = dockerfile
            .lines()
            .filter_map(|l| l.strip_prefix("FROM "))
            .collect();
        assert_eq!(from, [IMAGE_BASE]);
        // Debian's glibc per release: bookworm 2.36 (trixie would be 2.41).
        let glibc = match IMAGE_BASE {
            "debian:bookworm-slim" | "debian:bookworm" => (2, 36),
            other => panic!("the glibc of {other} is not known here"),
        };
        assert_eq!(glibc, IMAGE_GLIBC);
        assert!(dockerfile.contains(&format!("glibc {}.{}", IMAGE_GLIBC.0, IMAGE_GLIBC.1)));
        let shipped = crate::backend::modal::bridge::BRIDGE_FILES
            .iter()
            .find(|(name, _)| *name == "Dockerfile")
            .map(|(_, text)| *text);
        assert_eq!(shipped, Some(dockerfile));
    }

    proptest::proptest! {
        /// The ELF reader is total: any bytes after an x86-64 ELF magic give an
        /// answer or a reason, never a panic.
        #[test]
        fn newest_glibc_is_total(header in proptest::collection::vec(proptest::prelude::any::<u8>(), 58..=58),
                                 tail in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..2048)) {
            let mut bytes = b"\x7fELF\x02\x01".to_vec();
            bytes.extend_from_slice(&header);
            bytes.extend_from_slice(&tail);
            let _ = newest_glibc(&bytes);
        }
    }
}
