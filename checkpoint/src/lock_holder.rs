//! Who holds a store's lock, for E622's message: the processes `/proc/locks` names as
//! holding a `flock` on the lock file (matched by device and inode), with their names
//! from `/proc/<pid>/comm`. Best effort and bounded: `None` where `/proc` is not there
//! (or the holder is in a PID namespace this process cannot see). The coordinator asks
//! the same of its own `coordinator.lock` ([`flock_holders`]).

use std::fs::File;
use std::io::Read;
use std::os::unix::fs::MetadataExt;

/// The most of `/proc/locks` read (a line per lock held on the machine).
const MAX_PROC_LOCKS_BYTES: u64 = 4 << 20;
/// The most holders named.
const MAX_HOLDERS: usize = 4;

/// `pid 1234 (flock)` for each process holding a lock on `file`, joined by `, `.
pub(crate) fn describe(file: &File) -> Option<String> {
    let pids = flock_holders(file);
    if pids.is_empty() {
        return None;
    }
    let named: Vec<String> = pids
        .iter()
        .take(MAX_HOLDERS)
        .map(|pid| match comm(*pid) {
            Some(name) => format!("pid {pid} ({name})"),
            None => format!("pid {pid}"),
        })
        .collect();
    Some(named.join(", "))
}

/// The processes holding a lock on `file`, as `/proc/locks` names them (empty when
/// none does, or where it cannot be read). Looks only: it never takes the lock.
pub fn flock_holders(file: &File) -> Vec<u32> {
    let Ok(meta) = file.metadata() else {
        return Vec::new();
    };
    let mut text = String::new();
    let read = File::open("/proc/locks")
        .and_then(|f| f.take(MAX_PROC_LOCKS_BYTES).read_to_string(&mut text));
    if read.is_err() {
        return Vec::new();
    }
    holders_in(
        &text,
        dev_major(meta.dev()),
        dev_minor(meta.dev()),
        meta.ino(),
    )
}

/// The pids `/proc/locks` names as holding a lock (not waiting for one: `->` lines) on
/// the file `major:minor:inode` (pure, total). Lines look like
/// `1: FLOCK  ADVISORY  WRITE 1234 08:01:5678 0 EOF`.
pub(crate) fn holders_in(proc_locks: &str, major: u64, minor: u64, ino: u64) -> Vec<u32> {
    let mut pids = Vec::new();
    for line in proc_locks.lines() {
        let fields: Vec<&str> = line.split_whitespace().collect();
        // id, type, ADVISORY/MANDATORY, READ/WRITE, pid, dev:ino, start, end
        let [_, kind, _, _, pid, file, ..] = fields.as_slice() else {
            continue;
        };
        if *kind == "->" {
            continue;
        }
        let mut parts = file.split(':');
        let (Some(maj), Some(min), Some(inode), None) =
            (parts.next(), parts.next(), parts.next(), parts.next())
        else {
            continue;
        };
        let matches = u64::from_str_radix(maj, 16) == Ok(major)
            && u64::from_str_radix(min, 16) == Ok(minor)
            && inode.parse::<u64>() == Ok(ino);
        if let (true, Ok(pid)) = (matches, pid.parse::<u32>())
            && pid != 0
            && !pids.contains(&pid)
        {
            pids.push(pid);
        }
    }
    pids
}

/// A process's name, printable ASCII only (a process can name itself anything).
fn comm(pid: u32) -> Option<String> {
    let mut name = String::new();
    File::open(format!("/proc/{pid}/comm"))
        .ok()?
        .take(64)
        .read_to_string(&mut name)
        .ok()?;
    let name: String = name
        .trim_end()
        .chars()
        .filter(|c| c.is_ascii_graphic() || *c == ' ')
        .collect();
    (!name.is_empty()).then_some(name)
}

/// glibc's `major()`/`minor()` of a `dev_t`.
fn dev_major(dev: u64) -> u64 {
    ((dev >> 8) & 0xfff) | ((dev >> 32) & !0xfff)
}

fn dev_minor(dev: u64) -> u64 {
    (dev & 0xff) | ((dev >> 12) & !0xff)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn holders_are_matched_by_device_and_inode_and_waiters_are_left_out() {
        let text = "\
1: FLOCK  ADVISORY  WRITE 4321 00:2f:1234 0 EOF
1: -> FLOCK  ADVISORY  WRITE 999 00:2f:1234 0 EOF
2: FLOCK  ADVISORY  READ 55 00:2f:1235 0 EOF
3: POSIX  ADVISORY  WRITE 77 08:01:1234 0 EOF
4: FLOCK  ADVISORY  READ 4322 00:2f:1234 0 EOF
garbage
5: FLOCK ADVISORY WRITE notapid 00:2f:1234 0 EOF
";
        assert_eq!(holders_in(text, 0, 0x2f, 1234), vec![4321, 4322]);
        assert_eq!(holders_in(text, 8, 1, 1234), vec![77]);
        assert!(holders_in(text, 0, 0x2f, 1).is_empty());
    }

    #[test]
    fn a_lock_this_process_holds_is_named() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("lock");
        let held = File::create(&path).unwrap();
        held.lock().unwrap();
        let other = File::open(&path).unwrap();
        let Some(described) = describe(&other) else {
            // No /proc/locks here (not Linux, or not mounted): nothing to name.
            assert!(!std::path::Path::new("/proc/locks").exists());
            return;
        };
        assert!(
            described.contains(&format!("pid {}", std::process::id())),
            "{described}"
        );
    }
}
