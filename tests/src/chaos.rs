//! The chaos engine: rounds of random faults against real sessions on the scripted model,
//! each followed by recovery the way a user drives it and by checks that do not trust the
//! code under test.
//!
//! A round is planned entirely from its seed ([`RoundPlan::from_seed`]): how many messages the
//! session gets (one, or two with the second sent while the first is running, so faults land in
//! a later turn), the script's turns, which fault is injected and when. The script's turns
//! write deterministic files: bash turn `k` writes every missing `f1.txt ..= fk.txt` (each by a
//! rename, so no file is ever half-written), and message `m` has one `Write` turn writing
//! `wm.txt`. The expected bytes of every file come from the plan ([`file_content`]), never from
//! the product. Some bash turns sleep to open fault windows.
//!
//! Faults ([`Fault`]): SIGKILL of the agent, of Claude Code, of the session's tmux server, of
//! the coordinator; SIGTERM of the agent; SIGKILL of the agent while a checkpoint is being
//! written (the store's `tmp/` holds a file in progress); a full disk (the round's state
//! directory lives on a small tmpfs that is filled, then freed). Some rounds add a second fault:
//! the agent started by the resume is killed right after it restored.
//!
//! After the round the engine verifies, independently:
//! - `checkpoint_restorable`: every manifest in every store of the task (listed from the
//!   directory, not through the product) restores with the checkpoint library into a scratch
//!   dir, and its `f*.txt` files are exactly a prefix `f1..fk` with the script's bytes (`w*.txt`
//!   too, when present);
//! - `checkpoint_whole`: every checkpoint holds a workspace and a non-empty conversation
//!   (but a session's `start` checkpoint, taken before Claude Code exists, and the
//!   coordinator's `agent_gone` one, which holds the workspace alone);
//! - `events_equal_journal`: the database's events of every container equal the journal
//!   lines on the volume, read here with serde_json (no loss, no duplicates, same payloads);
//! - `spend_equals_served`: the task's recorded cost (`task show --json` and the ledger) equals
//!   what the stand-in served (its request log × `pricing.rs`, compared with `same_cost`);
//! - `state_after_fault`: a turn killed in flight is never `completed` before a resume; a
//!   disk-full round ends the task with a coded error that names the disk (not E502, not
//!   `running` for as long as the disk is full);
//! - `settles`, `recovered`: the task stops running after the fault, and a `parhelia resume`
//!   (after the disk is freed) brings it to `completed`;
//! - `workspace_prefix`: the live workspace at the end holds a prefix with the script's bytes.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use serde_json::{Value, json};

use crate::harness::Harness;
use crate::model_stand_in::pricing::{observed_price, same_cost};
use crate::model_stand_in::{LoggedRequest, RequestKind, Usage, WhenExhausted};
use crate::{Script, ToolCall, Turn};

/// How long a task may take to stop running after a fault (many heartbeat intervals: the
/// harness's is 200 ms). Not a performance threshold: past it the round reports `settles`.
const SETTLE_WAIT: Duration = Duration::from_secs(60);
/// How long a resumed task may take to finish its remaining turns.
const FINISH_WAIT: Duration = Duration::from_secs(150);
/// How long the coordinator may take to store what the journals hold.
const INGEST_WAIT: Duration = Duration::from_secs(30);
/// The tmpfs of a disk-full round.
const TMPFS_SIZE: &str = "160m";

/// One kind of fault.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Fault {
    KillAgent,
    KillClaude,
    KillTmux,
    KillCoordinator,
    TermAgent,
    KillDuringCheckpoint,
    DiskFull,
}

impl Fault {
    pub const ALL: [Fault; 7] = [
        Fault::KillAgent,
        Fault::KillClaude,
        Fault::KillTmux,
        Fault::KillCoordinator,
        Fault::TermAgent,
        Fault::KillDuringCheckpoint,
        Fault::DiskFull,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Fault::KillAgent => "kill_agent",
            Fault::KillClaude => "kill_claude",
            Fault::KillTmux => "kill_tmux",
            Fault::KillCoordinator => "kill_coordinator",
            Fault::TermAgent => "term_agent",
            Fault::KillDuringCheckpoint => "kill_during_checkpoint",
            Fault::DiskFull => "disk_full",
        }
    }

    pub fn parse(name: &str) -> Option<Fault> {
        Fault::ALL.into_iter().find(|f| f.name() == name)
    }

    /// Whether the fault ends the turn in flight (a coordinator kill does not: the agent
    /// and Claude Code carry on without it).
    fn ends_the_turn(self) -> bool {
        self != Fault::KillCoordinator
    }
}

/// The expected bytes of `f{i}.txt` in a round with `seed`.
pub fn file_content(seed: u64, i: u32) -> String {
    format!("chaos f{i} {seed:016x}\n")
}

/// The expected bytes of `w{m}.txt` (written by the `Write` tool in message `m`).
pub fn write_content(seed: u64, m: u32) -> String {
    format!("chaos w{m} {seed:016x} written by the Write tool\n")
}

/// splitmix64: each round's seed from the run's seed and the round's index.
pub fn round_seed(run_seed: u64, round: u64) -> u64 {
    let mut z = run_seed.wrapping_add(round.wrapping_add(1).wrapping_mul(0x9E37_79B9_7F4A_7C15));
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

/// Everything a round does, drawn from its seed.
#[derive(Clone, Debug)]
pub struct RoundPlan {
    pub seed: u64,
    /// Bash turns (files) of each message; the messages' files are numbered on from 1.
    pub files_per_message: Vec<u32>,
    /// Per bash turn (global order): sleep after writing (a fault window).
    pub sleepy: Vec<bool>,
    pub fault: Fault,
    /// The message whose turns the fault aims at (1-based).
    pub fault_message: u32,
    /// Inject once the stand-in served this many turns of that message (at least 1).
    pub fault_after_turns: usize,
    pub fault_delay_ms: u64,
    /// Kill the resumed agent right after its restore (a double fault).
    pub second_fault: bool,
}

impl RoundPlan {
    /// The plan of the round with `seed`, choosing among `faults`.
    pub fn from_seed(seed: u64, faults: &[Fault]) -> RoundPlan {
        let mut rng = fastrand::Rng::with_seed(seed);
        let messages = if rng.bool() { 2 } else { 1 };
        let files_per_message: Vec<u32> = (0..messages).map(|_| rng.u32(2..=3)).collect();
        let total: u32 = files_per_message.iter().sum();
        let mut sleepy: Vec<bool> = (0..total).map(|_| rng.u8(0..3) == 0).collect();
        if messages == 2 {
            // The second message is sent while the first runs: its first turn must last.
            sleepy[0] = true;
        }
        let fault = faults[rng.usize(0..faults.len())];
        let fault_message = if messages == 2 && rng.u8(0..4) != 0 {
            2
        } else {
            1
        };
        let files = files_per_message[fault_message as usize - 1] as usize;
        // In the session's last message, aim at a bash turn (never its Write turn) and,
        // unless that turn sleeps, strike within 300 ms: at least the Write and the closing
        // round trips are still ahead, so the fault finds the session running. Aimed later,
        // a quarter of the rounds found the session ended and tested nothing.
        let last = fault_message == messages;
        let fault_after_turns = rng.usize(1..=if last { files } else { files + 1 });
        let first_file: usize = files_per_message[..fault_message as usize - 1]
            .iter()
            .map(|n| *n as usize)
            .sum();
        let aimed_turn_sleeps = sleepy
            .get(first_file + fault_after_turns - 1)
            .copied()
            .unwrap_or(false);
        let fault_delay_ms = if last && !aimed_turn_sleeps {
            rng.u64(0..300)
        } else {
            rng.u64(0..1500)
        };
        let second_fault = fault != Fault::DiskFull && rng.u8(0..4) == 0;
        RoundPlan {
            seed,
            files_per_message,
            sleepy,
            fault,
            fault_message,
            fault_after_turns,
            fault_delay_ms,
            second_fault,
        }
    }

    pub fn messages(&self) -> u32 {
        self.files_per_message.len() as u32
    }

    fn total_files(&self) -> u32 {
        self.files_per_message.iter().sum()
    }

    /// The index of message `m`'s first script turn.
    fn first_turn_of(&self, m: u32) -> usize {
        self.files_per_message[..(m as usize - 1)]
            .iter()
            .map(|n| *n as usize + 2)
            .sum()
    }

    /// The script: per message, its bash turns, a `Write` turn and a closing text.
    pub fn script(&self) -> Script {
        let mut turns = Vec::new();
        let mut file = 0u32;
        let blob = self.fault == Fault::KillDuringCheckpoint;
        for (m, count) in self.files_per_message.iter().enumerate() {
            let m = m as u32 + 1;
            for _ in 0..*count {
                file += 1;
                let mut command = (1..=file)
                    .map(|i| {
                        format!(
                            "[ -f f{i}.txt ] || {{ printf '{}' > .f{i}.tmp && mv .f{i}.tmp f{i}.txt; }}",
                            file_content(self.seed, i).replace('\n', "\\n")
                        )
                    })
                    .collect::<Vec<_>>()
                    .join("; ");
                if blob && m == self.fault_message {
                    // Fresh random bytes: the next checkpoint has megabytes to store, which
                    // keeps its write (and the window for the kill) open.
                    command.push_str("; head -c 24000000 /dev/urandom > blob.bin");
                }
                if self.sleepy[file as usize - 1] {
                    command.push_str("; sleep 2");
                }
                turns.push(
                    Turn::tool_use([ToolCall::bash(command)])
                        .with_usage(200 + 10 * u64::from(file), 20 + u64::from(file)),
                );
            }
            turns.push(
                Turn::tool_use([ToolCall::write(
                    format!("w{m}.txt"),
                    write_content(self.seed, m),
                )])
                .with_usage(300 + u64::from(m), 30),
            );
            turns.push(Turn::text(format!("Message {m} done.")).with_usage(400 + u64::from(m), 5));
        }
        Script::new(turns).when_exhausted(WhenExhausted::Default(exhausted_turn()))
    }

    /// Script turn indexes that end a message (its closing text).
    fn closing_turns(&self) -> Vec<usize> {
        (1..=self.messages())
            .map(|m| self.first_turn_of(m) + self.files_per_message[m as usize - 1] as usize + 1)
            .collect()
    }
}

fn exhausted_turn() -> Turn {
    Turn::text("Nothing more to do.").with_usage(50, 3)
}

/// One broken promise, with what reproduces it.
#[derive(Clone, Debug)]
pub struct Violation {
    pub invariant: &'static str,
    pub round: u64,
    pub seed: u64,
    pub fault: Fault,
    pub detail: String,
}

/// What a run found.
#[derive(Debug, Default)]
pub struct Report {
    pub run_seed: u64,
    pub rounds: u64,
    pub faults: BTreeMap<&'static str, u64>,
    /// Rounds not run, by fault (disk full without a tmpfs).
    pub skipped: BTreeMap<&'static str, u64>,
    /// How to replay a violation's round; `{seed}` is replaced by its seed.
    pub replay_hint: String,
    pub second_faults: u64,
    /// Kill-during-checkpoint faults that saw a checkpoint write in progress.
    pub checkpoint_windows_hit: u64,
    pub checkpoints_verified: u64,
    pub events_compared: u64,
    pub spend_compared: u64,
    pub violations: Vec<Violation>,
    pub notes: Vec<String>,
    pub elapsed_s: u64,
}

impl Report {
    pub fn to_json(&self) -> Value {
        let mut by_invariant: BTreeMap<&str, Vec<Value>> = BTreeMap::new();
        for v in &self.violations {
            by_invariant.entry(v.invariant).or_default().push(json!({
                "round": v.round,
                "seed": format!("{:016x}", v.seed),
                "fault": v.fault.name(),
                "detail": v.detail,
            }));
        }
        json!({
            "run_seed": self.run_seed,
            "rounds": self.rounds,
            "faults": self.faults,
            "skipped": self.skipped,
            "second_faults": self.second_faults,
            "checkpoint_windows_hit": self.checkpoint_windows_hit,
            "checkpoints_verified": self.checkpoints_verified,
            "events_compared": self.events_compared,
            "spend_compared": self.spend_compared,
            "violation_count": self.violations.len(),
            "violations": by_invariant,
            "notes": self.notes,
            "elapsed_s": self.elapsed_s,
        })
    }

    /// One line per violation, with the command that replays its round.
    pub fn violation_lines(&self) -> Vec<String> {
        self.violations
            .iter()
            .map(|v| {
                format!(
                    "[{}] round {} ({}): {} — replay: {}",
                    v.invariant,
                    v.round,
                    v.fault.name(),
                    v.detail,
                    self.replay_hint
                        .replace("{seed}", &format!("{:016x}", v.seed))
                )
            })
            .collect()
    }
}

/// How to run.
#[derive(Clone, Debug)]
pub struct ChaosConfig {
    pub rounds: u64,
    pub seed: u64,
    /// Replay exactly these round seeds instead of deriving them from `seed`.
    pub round_seeds: Vec<u64>,
    /// Faults to choose from (default: all).
    pub faults: Vec<Fault>,
}

/// Whether this process may mount a tmpfs (root with CAP_SYS_ADMIN): tried, not guessed.
pub fn probe_mount() -> Result<(), String> {
    let dir = tempfile::tempdir().map_err(|e| e.to_string())?;
    mount_tmpfs(dir.path(), "1m")?;
    umount(dir.path());
    Ok(())
}

fn mount_tmpfs(dir: &Path, size: &str) -> Result<(), String> {
    let out = Command::new("mount")
        .args([
            "-t",
            "tmpfs",
            "-o",
            &format!("size={size},mode=0755"),
            "tmpfs",
        ])
        .arg(dir)
        .output()
        .map_err(|e| format!("mount could not run: {e}"))?;
    if out.status.success() {
        Ok(())
    } else {
        Err(format!(
            "mount -t tmpfs failed ({}): {}",
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        ))
    }
}

fn umount(dir: &Path) {
    let _ = Command::new("umount").arg("-l").arg(dir).status();
}

/// Runs the rounds and returns what they found. Never panics on what a round saw.
pub fn run(config: &ChaosConfig) -> Report {
    let mut notes = Vec::new();
    let mut faults = config.faults.clone();
    if faults.contains(&Fault::DiskFull)
        && let Err(why) = probe_mount()
    {
        faults.retain(|f| *f != Fault::DiskFull);
        notes.push(skip_note(&why));
    }
    if faults.is_empty() {
        notes.push("no fault kinds to run".into());
        return Report {
            run_seed: config.seed,
            notes,
            ..Report::default()
        };
    }
    let seeds: Vec<u64> = if config.round_seeds.is_empty() {
        (0..config.rounds)
            .map(|r| round_seed(config.seed, r))
            .collect()
    } else {
        config.round_seeds.clone()
    };
    let plans: Vec<RoundPlan> = seeds
        .into_iter()
        .map(|seed| RoundPlan::from_seed(seed, &faults))
        .collect();
    let mut report = run_plans(&plans);
    report.run_seed = config.seed;
    notes.append(&mut report.notes);
    report.notes = notes;
    report
}

fn skip_note(why: &str) -> String {
    let note = format!(
        "disk_full rounds SKIPPED: a tmpfs cannot be mounted here ({why}); run as root with CAP_SYS_ADMIN to include them"
    );
    eprintln!("chaos: {note}");
    note
}

/// Runs exactly these rounds (a disk-full round is skipped, with a note, where a tmpfs cannot
/// be mounted).
pub fn run_plans(plans: &[RoundPlan]) -> Report {
    let started = Instant::now();
    let mut report = Report {
        replay_hint: "CHAOS_ROUND_SEED={seed} scripts/chaos 1".into(),
        ..Report::default()
    };
    let can_mount = if plans.iter().any(|p| p.fault == Fault::DiskFull) {
        probe_mount().map_err(|why| report.notes.push(skip_note(&why)))
    } else {
        Ok(())
    };
    for (round, plan) in plans.iter().enumerate() {
        let seed = plan.seed;
        if plan.fault == Fault::DiskFull && can_mount.is_err() {
            *report.skipped.entry(plan.fault.name()).or_default() += 1;
            continue;
        }
        eprintln!(
            "chaos: round {round} seed {seed:016x}: {} message(s) {:?}, {} after {} turn(s) of message {} +{} ms{}",
            plan.messages(),
            plan.files_per_message,
            plan.fault.name(),
            plan.fault_after_turns,
            plan.fault_message,
            plan.fault_delay_ms,
            if plan.second_fault {
                ", then kill the resumed agent"
            } else {
                ""
            }
        );
        *report.faults.entry(plan.fault.name()).or_default() += 1;
        let before = report.violations.len();
        let outcome = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            let mut round_report = RoundFindings::default();
            run_round(plan, &mut round_report);
            round_report
        }));
        match outcome {
            Ok(found) => {
                report.checkpoints_verified += found.checkpoints_verified;
                report.events_compared += found.events_compared;
                report.spend_compared += found.spend_compared;
                report.checkpoint_windows_hit += found.window_hit as u64;
                report.second_faults += found.second_fault as u64;
                report.notes.extend(found.notes);
                for (invariant, detail) in found.violations {
                    report.violations.push(Violation {
                        invariant,
                        round: round as u64,
                        seed,
                        fault: plan.fault,
                        detail,
                    });
                }
            }
            Err(panic) => {
                let detail = panic
                    .downcast_ref::<String>()
                    .cloned()
                    .or_else(|| panic.downcast_ref::<&str>().map(|s| s.to_string()))
                    .unwrap_or_else(|| "panic".into());
                report.violations.push(Violation {
                    invariant: "harness",
                    round: round as u64,
                    seed,
                    fault: plan.fault,
                    detail: truncate(&detail, 600),
                });
            }
        }
        report.rounds += 1;
        for line in &report.violation_lines()[before..] {
            eprintln!("chaos: VIOLATION {line}");
        }
    }
    report.elapsed_s = started.elapsed().as_secs();
    report
}

#[derive(Default)]
struct RoundFindings {
    checkpoints_verified: u64,
    events_compared: u64,
    spend_compared: u64,
    window_hit: bool,
    second_fault: bool,
    violations: Vec<(&'static str, String)>,
    notes: Vec<String>,
}

impl RoundFindings {
    fn violation(&mut self, invariant: &'static str, detail: impl Into<String>) {
        self.violations
            .push((invariant, truncate(&detail.into(), 600)));
    }
}

fn truncate(s: &str, max: usize) -> String {
    if s.len() <= max {
        return s.to_string();
    }
    let mut end = max;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}…", &s[..end])
}

/// A tmpfs mounted for one round; unmounted (lazily) on drop, after the harness is gone.
struct Tmpfs {
    dir: tempfile::TempDir,
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        umount(self.dir.path());
    }
}

fn run_round(plan: &RoundPlan, found: &mut RoundFindings) {
    let tmpfs = if plan.fault == Fault::DiskFull {
        let dir = tempfile::tempdir().expect("tempdir");
        if let Err(why) = mount_tmpfs(dir.path(), TMPFS_SIZE) {
            found
                .notes
                .push(format!("disk_full round could not mount: {why}"));
            return;
        }
        Some(Tmpfs { dir })
    } else {
        None
    };
    {
        let mut h = match &tmpfs {
            Some(t) => Harness::new_in(plan.script(), t.dir.path()),
            None => Harness::new(plan.script()),
        };
        // A dead agent is noticed within seconds (poll 1 s, stale after 5 s) rather than the
        // defaults' minutes, and periodic checkpoints (every 3 s) give the faults more
        // checkpoint writes to land in. Sessions keep the default isolation, so a killed agent
        // takes its sandbox (tmux, Claude Code) with it, as a container would.
        std::fs::write(
            h.state().join("config.toml"),
            "[reconciler]\npoll_interval_seconds = 1.0\nstale_threshold_seconds = 5.0\n\n[checkpoint]\ninterval_seconds = 3.0\n",
        )
        .expect("write config.toml");
        let _ = &mut h;
        let mut round = Round {
            h: &h,
            plan,
            found,
            task_id: String::new(),
            session_id: String::new(),
            sent: 1,
            sockets: BTreeSet::new(),
            fault_at_ms: None,
        };
        round.play(tmpfs.as_ref().map(|t| t.dir.path()));
        let sockets = std::mem::take(&mut round.sockets);
        drop(round);
        h.run(&["coordinator", "stop"]);
        drop(h);
        // Leftover tmux servers of killed agents (and their Claude Code).
        for socket in sockets {
            let _ = Command::new("tmux")
                .arg("-S")
                .arg(&socket)
                .arg("kill-server")
                .stderr(std::process::Stdio::null())
                .status();
        }
    }
    drop(tmpfs);
}

struct Round<'a> {
    h: &'a Harness,
    plan: &'a RoundPlan,
    found: &'a mut RoundFindings,
    task_id: String,
    session_id: String,
    /// Messages the session was given.
    sent: u32,
    sockets: BTreeSet<PathBuf>,
    /// When the (first) fault was injected, ms since the epoch.
    fault_at_ms: Option<u64>,
}

impl Round<'_> {
    fn play(&mut self, tmpfs: Option<&Path>) {
        let out = self.h.run(&[
            "task",
            "create",
            "Chaos round: write the files, one turn at a time",
            "--json",
        ]);
        if !out.status.success() {
            self.found.violation(
                "harness",
                format!(
                    "task create failed: {}",
                    String::from_utf8_lossy(&out.stderr)
                ),
            );
            return;
        }
        let created: Value = serde_json::from_slice(&out.stdout).unwrap_or_default();
        self.task_id = created["task_id"].as_str().unwrap_or_default().to_string();
        self.session_id = created["session_id"]
            .as_str()
            .unwrap_or_default()
            .to_string();

        let first_of_target = self.plan.first_turn_of(self.plan.fault_message);
        if self.plan.messages() == 2 {
            // Sent while message 1's first turn runs (it sleeps): queued for turn 2.
            self.wait_served(1, Duration::from_secs(60));
            let out = self.h.run(&[
                "session",
                "send",
                &self.session_id,
                "Now the second message: write more files.",
            ]);
            if out.status.success() {
                self.sent = 2;
            } else {
                self.found.notes.push(format!(
                    "round {:016x}: session send failed, the round has one message: {}",
                    self.plan.seed,
                    String::from_utf8_lossy(&out.stderr).trim()
                ));
            }
        }

        // The fault.
        let fault = self.plan.fault;
        let in_flight;
        self.fault_at_ms = Some(epoch_ms());
        if fault == Fault::KillDuringCheckpoint {
            self.wait_served(first_of_target + 1, Duration::from_secs(60));
            in_flight = self.inject_during_checkpoint();
        } else {
            self.wait_served(
                first_of_target + self.plan.fault_after_turns,
                Duration::from_secs(60),
            );
            std::thread::sleep(Duration::from_millis(self.plan.fault_delay_ms));
            in_flight = self.in_flight();
            self.inject(fault, tmpfs);
        }

        // What the product says once the fault settled.
        let settled = self.settle(fault);
        if self.h.stand_in.turns_consumed() == 0 {
            // Nothing ran: the round tested nothing (e.g. mismatched binaries).
            self.found.violation(
                "harness",
                format!(
                    "the session never reached the model: task {} {} {}",
                    settled["status"].as_str().unwrap_or("?"),
                    settled["error_code"].as_str().unwrap_or(""),
                    settled["error_message"].as_str().unwrap_or("")
                ),
            );
            return;
        }
        let status = settled["status"].as_str().unwrap_or("?").to_string();
        if fault == Fault::DiskFull {
            self.check_disk_full(&settled);
            if let Some(dir) = tmpfs {
                let _ = std::fs::remove_file(dir.join("fill"));
            }
        } else if in_flight && fault.ends_the_turn() && status == "completed" {
            self.found.violation(
                "state_after_fault",
                format!(
                    "{} killed a turn in flight ({} of {} message(s) answered when it landed), yet the task is completed (result {:?}) before any resume",
                    fault.name(),
                    self.answered(),
                    self.sent,
                    settled["result"].as_str().unwrap_or("")
                ),
            );
        }

        if std::env::var_os("CHAOS_DEBUG").is_some() {
            for args in [
                &["events", "list", "--task", &self.task_id, "--json"][..],
                &["checkpoint", "list", &self.session_id][..],
            ] {
                let _ = std::process::Command::new("cp")
                    .arg("-a")
                    .arg(self.h.dir.path())
                    .arg(format!("/tmp/chaos-debug-{:016x}", self.plan.seed))
                    .status();
                let out = self.h.run(args);
                eprintln!(
                    "chaos debug: parhelia {}\n{}{}",
                    args.join(" "),
                    String::from_utf8_lossy(&out.stdout),
                    String::from_utf8_lossy(&out.stderr)
                );
            }
        }
        // Recovery, as a user would: resume until it completes (at most twice).
        let mut second_fault_pending = self.plan.second_fault;
        let mut status = status;
        let mut resumes = 0;
        let mut last_failure = String::new();
        for _ in 0..3 {
            if status == "completed" {
                break;
            }
            let out = self
                .h
                .run(&["resume", &self.session_id, "-m", "Please continue."]);
            let stderr = String::from_utf8_lossy(&out.stderr).to_string();
            if !out.status.success() && stderr.contains("E205") && self.finished_checkpoints() == 0
            {
                // Killed before any checkpoint finished: nothing to resume from, and the
                // product says so with a code. Not a broken promise.
                self.found.notes.push(format!(
                    "round {:016x}: {} landed before any checkpoint finished; resume says E205 (nothing to resume from)",
                    self.plan.seed,
                    fault.name()
                ));
                return self.verify();
            }
            if !out.status.success() {
                self.found.violation(
                    "recovered",
                    format!(
                        "parhelia resume failed after {}{}: {}",
                        fault.name(),
                        if self.found.second_fault {
                            " and a killed resume"
                        } else {
                            ""
                        },
                        String::from_utf8_lossy(&out.stderr).trim()
                    ),
                );
                return self.verify();
            }
            if second_fault_pending {
                second_fault_pending = false;
                if self.kill_after_restore() {
                    self.found.second_fault = true;
                    let settled = self.settle(Fault::KillAgent);
                    status = settled["status"].as_str().unwrap_or("?").to_string();
                    continue;
                }
            }
            let done = self.wait_status(FINISH_WAIT, |s| s != "running" && s != "pending");
            status = done["status"].as_str().unwrap_or("?").to_string();
            resumes += 1;
            if status != "completed" {
                // One more resume, if the product lets us; reported once, below.
                last_failure = format!(
                    "after {resumes} resume(s) the task is {status} ({} {})",
                    done["error_code"].as_str().unwrap_or(""),
                    done["error_message"].as_str().unwrap_or("")
                );
            }
        }
        if status != "completed" && !last_failure.is_empty() {
            self.found.violation("recovered", last_failure);
        }
        self.verify();
    }

    /// Manifests in the stores of the task's sessions (listed from their directories).
    fn finished_checkpoints(&self) -> usize {
        self.sessions()
            .iter()
            .map(|(_, volume)| {
                list_dir(&volume.join("checkpoints/manifests"))
                    .iter()
                    .filter(|n| n.ends_with(".manifest"))
                    .count()
            })
            .sum()
    }

    /// The task as `task show --json` has it (Null when that fails).
    fn show(&self) -> Value {
        let out = self.h.run(&["task", "show", &self.task_id, "--json"]);
        if !out.status.success() {
            return Value::Null;
        }
        serde_json::from_slice(&out.stdout).unwrap_or(Value::Null)
    }

    fn wait_status(&self, wait: Duration, done: impl Fn(&str) -> bool) -> Value {
        let deadline = Instant::now() + wait;
        loop {
            let task = self.show();
            if done(task["status"].as_str().unwrap_or("?")) || Instant::now() >= deadline {
                return task;
            }
            std::thread::sleep(Duration::from_millis(200));
        }
    }

    /// Waits until the stand-in served `n` script turns (or the task stopped running).
    fn wait_served(&self, n: usize, wait: Duration) {
        let deadline = Instant::now() + wait;
        while self.h.stand_in.turns_consumed() < n && Instant::now() < deadline {
            let status = self.show()["status"].as_str().unwrap_or("?").to_string();
            if status != "running" && status != "pending" {
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Messages whose closing text the stand-in has served.
    fn answered(&self) -> u32 {
        let closing = self.plan.closing_turns();
        self.h
            .stand_in
            .requests()
            .iter()
            .filter(|r| {
                r.kind == RequestKind::Exhausted
                    || r.turn_index.is_some_and(|i| closing.contains(&i))
            })
            .count() as u32
    }

    /// Whether a message's turn is still unanswered: its work cannot have finished.
    fn in_flight(&self) -> bool {
        self.answered() < self.sent
    }

    fn current_container(&self) -> Option<String> {
        self.h
            .db()
            .query_row(
                "SELECT id FROM containers WHERE task_id = ?1 ORDER BY created_at_ms DESC, rowid DESC LIMIT 1",
                [&self.task_id],
                |r| r.get(0),
            )
            .ok()
    }

    fn agent(&mut self) -> Option<(i32, PathBuf)> {
        let container = self.current_container()?;
        let runtime = self
            .h
            .state()
            .join("containers")
            .join(&container)
            .join("runtime");
        let info: Value =
            serde_json::from_str(&std::fs::read_to_string(runtime.join("agent.json")).ok()?)
                .ok()?;
        let socket = PathBuf::from(info["tmux_socket"].as_str()?);
        self.sockets.insert(socket.clone());
        Some((info["pid"].as_i64()? as i32, socket))
    }

    fn inject(&mut self, fault: Fault, tmpfs: Option<&Path>) {
        let landed = self.inject_inner(fault, tmpfs);
        if landed != Some(true) && self.show()["status"] == "running" {
            self.found.violation(
                "harness",
                format!(
                    "{} found no target while the task was running",
                    fault.name()
                ),
            );
        } else if landed != Some(true) {
            self.found.notes.push(format!(
                "round {:016x}: {} found no target (the session had ended)",
                self.plan.seed,
                fault.name()
            ));
        }
        if fault == Fault::KillCoordinator {
            // A user's next command that needs the coordinator starts it again (`status`
            // reads the database and does not).
            std::thread::sleep(Duration::from_millis(300));
            let out = self.h.run(&["reconciler", "run", "--once", "--dry-run"]);
            if !out.status.success() {
                self.found.notes.push(format!(
                    "round {:016x}: `reconciler run --once --dry-run` after the coordinator kill failed: {}",
                    self.plan.seed,
                    String::from_utf8_lossy(&out.stderr).trim()
                ));
            }
        }
    }

    fn inject_inner(&mut self, fault: Fault, tmpfs: Option<&Path>) -> Option<bool> {
        match fault {
            Fault::KillAgent => self.agent().map(|(pid, _)| signal(pid, "KILL")),
            Fault::TermAgent => self.agent().map(|(pid, _)| signal(pid, "TERM")),
            Fault::KillTmux => self
                .agent()
                .and_then(|(agent, socket)| retry(|| tmux_server_pid(agent, &socket)))
                .map(|pid| signal(pid, "KILL")),
            Fault::KillClaude => self
                .agent()
                .and_then(|(agent, socket)| retry(|| claude_pid(agent, &socket)))
                .map(|pid| signal(pid, "KILL")),
            Fault::KillCoordinator => coordinator_pid(self.h).map(|pid| signal(pid, "KILL")),
            Fault::DiskFull => tmpfs.map(|dir| {
                fill(&dir.join("fill"));
                true
            }),
            Fault::KillDuringCheckpoint => unreachable!("injected by inject_during_checkpoint"),
        }
    }

    /// Watches the store for a checkpoint in progress (a new file under `tmp/`) and kills
    /// the agent then; returns whether a turn was in flight.
    fn inject_during_checkpoint(&mut self) -> bool {
        let store = self.store_dir(&self.session_id);
        let tmp = store.join("tmp");
        let before: BTreeSet<_> = list_dir(&tmp);
        let deadline = Instant::now() + Duration::from_secs(30);
        let agent = self.agent();
        while Instant::now() < deadline {
            let now = list_dir(&tmp);
            if now.difference(&before).next().is_some() {
                self.found.window_hit = true;
                break;
            }
            std::thread::sleep(Duration::from_millis(1));
        }
        if !self.found.window_hit {
            self.found.notes.push(format!(
                "round {:016x}: kill_during_checkpoint saw no checkpoint in progress within 30 s; killed the agent anyway",
                self.plan.seed
            ));
        }
        let in_flight = self.in_flight();
        match agent {
            Some((pid, _)) => {
                signal(pid, "KILL");
            }
            None => self.found.notes.push(format!(
                "round {:016x}: kill_during_checkpoint found no agent",
                self.plan.seed
            )),
        }
        in_flight
    }

    /// After a resume: waits for the new agent's restore, then kills it.
    fn kill_after_restore(&mut self) -> bool {
        let before = self.current_container();
        let deadline = Instant::now() + Duration::from_secs(60);
        while Instant::now() < deadline {
            let container = self.current_container();
            if container.is_some() && container != before {
                break;
            }
            if let Some(c) = &container {
                let restored: i64 = self
                    .h
                    .db()
                    .query_row(
                        "SELECT count(*) FROM events WHERE container_id = ?1 AND type = 'checkpoint_restored'",
                        [c],
                        |r| r.get(0),
                    )
                    .unwrap_or(0);
                if restored > 0 {
                    break;
                }
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        match self.agent() {
            Some((pid, _)) => signal(pid, "KILL"),
            None => false,
        }
    }

    /// Waits for the task to stop running after a fault.
    fn settle(&mut self, fault: Fault) -> Value {
        let task = self.wait_status(SETTLE_WAIT, |s| s != "running" && s != "pending");
        let status = task["status"].as_str().unwrap_or("?");
        if status == "running" || status == "pending" {
            self.found.violation(
                "settles",
                format!(
                    "after {} the task is still {status} {} s later",
                    fault.name(),
                    SETTLE_WAIT.as_secs()
                ),
            );
        }
        task
    }

    fn check_disk_full(&mut self, task: &Value) {
        let status = task["status"].as_str().unwrap_or("?");
        let code = task["error_code"].as_str().unwrap_or("");
        let message = task["error_message"].as_str().unwrap_or("").to_lowercase();
        let names_disk = ["disk", "space", "full", "enospc"]
            .iter()
            .any(|w| message.contains(w));
        if status == "completed" && !self.in_flight() {
            return;
        }
        if status == "running"
            || status == "pending"
            || code.is_empty()
            || code == "E502"
            || !names_disk
        {
            self.found.violation(
                "state_after_fault",
                format!(
                    "disk full: the task is {status} with {:?} {:?}; expected a coded error naming the disk",
                    code,
                    task["error_message"].as_str().unwrap_or("")
                ),
            );
        }
    }

    fn sessions(&self) -> Vec<(String, PathBuf)> {
        let db = self.h.db();
        let mut stmt = db
            .prepare(
                "SELECT id, volume_dir FROM sessions WHERE task_id = ?1 ORDER BY created_at_ms",
            )
            .expect("sessions query");
        stmt.query_map([&self.task_id], |r| {
            Ok((
                r.get::<_, String>(0)?,
                PathBuf::from(r.get::<_, String>(1)?),
            ))
        })
        .expect("sessions")
        .filter_map(Result::ok)
        .collect()
    }

    fn store_dir(&self, session_id: &str) -> PathBuf {
        self.sessions()
            .into_iter()
            .find(|(id, _)| id == session_id)
            .map(|(_, volume)| volume.join("checkpoints"))
            .unwrap_or_else(|| {
                self.h
                    .state()
                    .join("sessions")
                    .join(session_id)
                    .join("volume/checkpoints")
            })
    }

    fn verify(&mut self) {
        self.verify_events();
        self.verify_checkpoints();
        self.verify_spend();
        self.verify_workspace();
    }

    /// The database's events equal the journals' lines, container by container.
    fn verify_events(&mut self) {
        let containers: Vec<(String, PathBuf)> = {
            let db = self.h.db();
            let mut stmt = db
                .prepare(
                    "SELECT c.id, s.volume_dir FROM containers c JOIN sessions s ON c.session_id = s.id WHERE c.task_id = ?1",
                )
                .expect("containers query");
            stmt.query_map([&self.task_id], |r| {
                Ok((
                    r.get::<_, String>(0)?,
                    PathBuf::from(r.get::<_, String>(1)?),
                ))
            })
            .expect("containers")
            .filter_map(Result::ok)
            .collect()
        };
        let deadline = Instant::now() + INGEST_WAIT;
        let compared = loop {
            let mut problems = Vec::new();
            let mut compared = 0;
            for (container, volume) in &containers {
                let journal =
                    read_journal(&volume.join("journal").join(format!("{container}.jsonl")));
                let stored = self.stored_events(container);
                compared += journal.len().max(stored.len()) as u64;
                problems.extend(compare_events(container, &journal, &stored));
            }
            if problems.is_empty() {
                break compared;
            }
            if Instant::now() >= deadline {
                for p in problems {
                    self.found.violation("events_equal_journal", p);
                }
                break compared;
            }
            std::thread::sleep(Duration::from_millis(500));
        };
        self.found.events_compared += compared;
    }

    fn stored_events(&self, container: &str) -> Vec<(u64, Value)> {
        let db = self.h.db();
        let mut stmt = db
            .prepare("SELECT seq, payload FROM events WHERE container_id = ?1 ORDER BY seq, id")
            .expect("events query");
        stmt.query_map([container], |r| {
            let payload: String = r.get(1)?;
            Ok((
                r.get::<_, i64>(0)? as u64,
                serde_json::from_str(&payload).unwrap_or(Value::Null),
            ))
        })
        .expect("events")
        .filter_map(Result::ok)
        .collect()
    }

    /// Every manifest in every store of the task restores, whole, with the script's bytes.
    fn verify_checkpoints(&mut self) {
        for (session, volume) in self.sessions() {
            let store_dir = volume.join("checkpoints");
            let manifests = store_dir.join("manifests");
            let ids: Vec<String> = list_dir(&manifests)
                .into_iter()
                .filter_map(|n| n.strip_suffix(".manifest").map(str::to_string))
                .collect();
            if ids.is_empty() {
                continue;
            }
            let store = match parhelia_checkpoint::Store::open(&store_dir) {
                Ok(s) => s,
                Err(e) => {
                    self.found.violation(
                        "checkpoint_restorable",
                        format!("store of {session} does not open: {e}"),
                    );
                    continue;
                }
            };
            let mut ids = ids;
            ids.sort();
            let mut previous_ms = None;
            for id in ids {
                self.found.checkpoints_verified += 1;
                let created_ms = id
                    .strip_prefix("cp-")
                    .and_then(|rest| rest.split('-').next())
                    .and_then(|ms| ms.parse::<i64>().ok());
                let checked = self.verify_checkpoint(&store, &id, previous_ms);
                previous_ms = created_ms.or(previous_ms);
                if let Err(problem) = checked {
                    let (invariant, text) = problem;
                    self.found
                        .violation(invariant, format!("{session} {id}: {text}"));
                }
            }
        }
    }

    fn verify_checkpoint(
        &self,
        store: &parhelia_checkpoint::Store,
        id: &str,
        previous_ms: Option<i64>,
    ) -> Result<(), (&'static str, String)> {
        let bad = |e: String| ("checkpoint_restorable", e);
        let cp = parhelia_checkpoint::CheckpointId::parse(id).map_err(|e| bad(e.to_string()))?;
        let manifest = store.load(&cp).map_err(|e| bad(format!("manifest: {e}")))?;
        let scratch = tempfile::tempdir().map_err(|e| bad(e.to_string()))?;
        let ws = scratch.path().join("workspace");
        store.restore_tree(&cp, "workspace", &ws).map_err(|e| {
            bad(format!(
                "restore of the workspace ({}): {e}",
                manifest.trigger
            ))
        })?;
        check_prefix(self.plan, &ws).map_err(|e| bad(format!("({}) {e}", manifest.trigger)))?;
        let conversation = scratch.path().join("conversation");
        match manifest.tree("conversation") {
            None => {
                return Err((
                    "checkpoint_whole",
                    format!("({}) has no conversation tree", manifest.trigger),
                ));
            }
            Some(_) => {
                store
                    .restore_tree(&cp, "conversation", &conversation)
                    .map_err(|e| bad(format!("restore of the conversation: {e}")))?;
            }
        }
        // A session's `start` checkpoint is taken before Claude Code exists: the
        // workspace alone, by design. Any other may lack a conversation only while
        // Claude Code had none: a checkpoint taken after the fault (`pre_restore`,
        // the coordinator's `agent_gone` of what a dead agent left) when no model
        // request had been served before the fault; one the live agent took, when
        // none had been served before its previous checkpoint was committed (so
        // before this one began). Claude Code writes its transcript before it asks.
        let first_served = self
            .h
            .stand_in
            .requests()
            .iter()
            .filter(|r| r.has_tools)
            .map(|r| r.at_ms)
            .min();
        let had_conversation_by = match manifest.trigger.as_str() {
            "start" => None,
            "pre_restore" | "agent_gone" => self.fault_at_ms,
            _ => previous_ms.map(|ms| ms.max(0) as u64),
        };
        if count_files(&conversation) == 0
            && first_served
                .zip(had_conversation_by)
                .is_some_and(|(served, by)| served < by)
        {
            return Err((
                "checkpoint_whole",
                format!(
                    "({}) holds no conversation: a resume or rollback to it cannot continue the session",
                    manifest.trigger
                ),
            ));
        }
        Ok(())
    }

    /// Recorded spend equals what the stand-in served.
    fn verify_spend(&mut self) {
        let script = self.plan.script();
        let mut served = 0.0;
        let mut unpriced = BTreeSet::new();
        for r in self.h.stand_in.requests() {
            let Some(usage) = served_usage(&script, &r) else {
                continue;
            };
            let model = r.model.clone().unwrap_or_default();
            match observed_price(&model) {
                Some(price) => served += price.cost_usd(&usage),
                None => {
                    unpriced.insert(model);
                }
            }
        }
        if !unpriced.is_empty() {
            self.found.notes.push(format!(
                "round {:016x}: spend not compared, unpriced models {unpriced:?}",
                self.plan.seed
            ));
            return;
        }
        // The ledger may lag the last event by a moment.
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let task = self.show();
            let shown = task["cost_usd"].as_f64().unwrap_or(-1.0);
            let ledger: f64 = self
                .h
                .db()
                .query_row(
                    "SELECT coalesce(sum(amount_usd), 0) FROM ledger WHERE task_id = ?1 AND kind = 'model'",
                    [&self.task_id],
                    |r| r.get(0),
                )
                .unwrap_or(-1.0);
            if same_cost(shown, served) && same_cost(ledger, served) {
                self.found.spend_compared += 1;
                return;
            }
            if Instant::now() >= deadline {
                self.found.spend_compared += 1;
                let requests = self.h.stand_in.requests();
                let count = |k: RequestKind| requests.iter().filter(|r| r.kind == k).count();
                // Less recorded than served, task and ledger agreeing: the spend of
                // a turn cut off by the fault was never charged (issue 13: model
                // spend charged per API response). Anything else is a bookkeeping
                // error of its own.
                let mut unwritten_note = String::new();
                let invariant = if same_cost(shown, ledger) && shown < served {
                    // Responses the stand-in served that no transcript holds: Claude
                    // Code was killed before it wrote them, so no source the product
                    // has can show them. That shortfall is no broken promise when it is
                    // exactly their cost and the product says spend is unknown.
                    let (unwritten, unwritten_usd) = self.unwritten_responses(&script);
                    let said_unknown = task["unknown_model_requests"].as_u64().unwrap_or(0) > 0;
                    unwritten_note = format!(
                        "; {unwritten} response(s) (${unwritten_usd:.6}) in no transcript, unknown_model_requests {}",
                        task["unknown_model_requests"]
                    );
                    // A headless run's stdout may have shown them (with their input
                    // counts, not their final output ones): charged at that lower bound,
                    // the shortfall is part of their cost, never more.
                    let shortfall = served - shown;
                    if unwritten > 0
                        && said_unknown
                        && (same_cost(shown + unwritten_usd, served) || shortfall < unwritten_usd)
                    {
                        self.found.notes.push(format!(
                            "round {:016x}: {unwritten} response(s) served (${unwritten_usd:.6}) that Claude Code was killed before writing (${shortfall:.6} of it not on record); the task says its spend is unknown",
                            self.plan.seed
                        ));
                        return;
                    }
                    "spend_of_cut_turns_recorded"
                } else {
                    "spend_equals_served"
                };
                self.found.violation(
                    invariant,
                    format!(
                        "served ${served:.6} by the stand-in ({} script turns, {} exhausted, {} side), recorded ${shown:.6} (task) / ${ledger:.6} (ledger model rows){unwritten_note}",
                        count(RequestKind::Turn),
                        count(RequestKind::Exhausted),
                        count(RequestKind::Side)
                    ),
                );
                return;
            }
            std::thread::sleep(Duration::from_millis(500));
        }
    }

    /// The served responses no Claude Code transcript of the round holds (by message
    /// id, read from the files, independently of the product), and their cost.
    fn unwritten_responses(&self, script: &Script) -> (usize, f64) {
        let mut text = String::new();
        let mut stack = vec![self.h.state().join("containers")];
        let mut files = 0;
        while let Some(dir) = stack.pop() {
            for entry in std::fs::read_dir(&dir).into_iter().flatten().flatten() {
                let Ok(kind) = entry.file_type() else {
                    continue;
                };
                let path = entry.path();
                if kind.is_dir() {
                    stack.push(path);
                } else if kind.is_file()
                    && path.extension().is_some_and(|e| e == "jsonl")
                    && files < 10_000
                {
                    files += 1;
                    text.push_str(&std::fs::read_to_string(&path).unwrap_or_default());
                }
            }
        }
        let mut count = 0;
        let mut usd = 0.0;
        for r in self.h.stand_in.requests() {
            let (Some(id), Some(usage)) = (&r.message_id, served_usage(script, &r)) else {
                continue;
            };
            if !text.contains(&format!("\"{id}\"")) {
                count += 1;
                usd += observed_price(r.model.as_deref().unwrap_or_default())
                    .map_or(0.0, |p| p.cost_usd(&usage));
            }
        }
        (count, usd)
    }

    fn verify_workspace(&mut self) {
        let ws: Option<String> = self
            .h
            .db()
            .query_row(
                "SELECT workspace_dir FROM sessions WHERE id = ?1",
                [&self.session_id],
                |r| r.get(0),
            )
            .ok();
        let Some(ws) = ws else {
            return;
        };
        if let Err(e) = check_prefix(self.plan, Path::new(&ws)) {
            self.found.violation("workspace_prefix", e);
        }
    }
}

/// The usage the stand-in reported for one request, if it answered with a message.
fn served_usage(script: &Script, r: &LoggedRequest) -> Option<Usage> {
    match r.kind {
        RequestKind::Turn => r
            .turn_index
            .and_then(|i| script.turns.get(i))
            .map(|t| t.usage),
        RequestKind::Exhausted => Some(exhausted_turn().usage),
        RequestKind::Side => Some(script.side_usage),
        _ => None,
    }
}

/// The `f*.txt` of a restored or live workspace are `f1..fk` with the script's bytes, and any
/// `w*.txt` has its script's bytes.
pub fn check_prefix(plan: &RoundPlan, dir: &Path) -> Result<u32, String> {
    let mut numbers = Vec::new();
    for name in list_dir(dir) {
        if let Some(n) = name
            .strip_prefix('f')
            .and_then(|r| r.strip_suffix(".txt"))
            .and_then(|n| n.parse::<u32>().ok())
        {
            numbers.push(n);
            let got = std::fs::read(dir.join(&name)).unwrap_or_default();
            if got != file_content(plan.seed, n).as_bytes() {
                return Err(format!(
                    "{name} holds {:?}, the script wrote {:?}",
                    String::from_utf8_lossy(&got),
                    file_content(plan.seed, n)
                ));
            }
        } else if let Some(m) = name
            .strip_prefix('w')
            .and_then(|r| r.strip_suffix(".txt"))
            .and_then(|n| n.parse::<u32>().ok())
        {
            let got = std::fs::read(dir.join(&name)).unwrap_or_default();
            if got != write_content(plan.seed, m).as_bytes() {
                return Err(format!(
                    "{name} holds {:?}, the Write tool was given {:?}",
                    String::from_utf8_lossy(&got),
                    write_content(plan.seed, m)
                ));
            }
        }
    }
    numbers.sort_unstable();
    let k = numbers.len() as u32;
    if numbers != (1..=k).collect::<Vec<_>>() || k > plan.total_files() {
        return Err(format!("files f{numbers:?}.txt are not a prefix f1..fk"));
    }
    Ok(k)
}

fn list_dir(dir: &Path) -> BTreeSet<String> {
    std::fs::read_dir(dir)
        .map(|entries| {
            entries
                .flatten()
                .filter_map(|e| e.file_name().into_string().ok())
                .collect()
        })
        .unwrap_or_default()
}

fn count_files(dir: &Path) -> usize {
    let mut n = 0;
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for entry in std::fs::read_dir(&d).into_iter().flatten().flatten() {
            match entry.file_type() {
                Ok(t) if t.is_dir() => stack.push(entry.path()),
                Ok(t) if t.is_file() => n += 1,
                _ => {}
            }
        }
    }
    n
}

/// The complete lines of a journal, parsed with serde_json: (seq, event). A torn last line
/// (no newline) was never announced and is left out.
fn read_journal(path: &Path) -> Vec<(u64, Value)> {
    let Ok(bytes) = std::fs::read(path) else {
        return Vec::new();
    };
    let complete = match bytes.iter().rposition(|b| *b == b'\n') {
        Some(end) => &bytes[..=end],
        None => return Vec::new(),
    };
    complete
        .split(|b| *b == b'\n')
        .filter(|l| !l.is_empty())
        .map(|line| {
            let v: Value = serde_json::from_slice(line).unwrap_or(Value::Null);
            (v["seq"].as_u64().unwrap_or(0), v)
        })
        .collect()
}

/// What differs between a container's journal and its stored events.
fn compare_events(
    container: &str,
    journal: &[(u64, Value)],
    stored: &[(u64, Value)],
) -> Vec<String> {
    let mut problems = Vec::new();
    let mut seen = HashMap::new();
    for (seq, _) in stored {
        *seen.entry(*seq).or_insert(0u32) += 1;
    }
    let duplicated: Vec<u64> = seen
        .iter()
        .filter(|(_, n)| **n > 1)
        .map(|(s, _)| *s)
        .collect();
    if !duplicated.is_empty() {
        problems.push(format!("{container}: seqs stored twice: {duplicated:?}"));
    }
    let journal_map: BTreeMap<u64, &Value> = journal.iter().map(|(s, v)| (*s, v)).collect();
    let stored_map: BTreeMap<u64, &Value> = stored.iter().map(|(s, v)| (*s, v)).collect();
    if journal_map.len() != journal.len() {
        problems.push(format!("{container}: the journal repeats a seq"));
    }
    let missing: Vec<u64> = journal_map
        .keys()
        .filter(|s| !stored_map.contains_key(s))
        .copied()
        .collect();
    if !missing.is_empty() {
        problems.push(format!(
            "{container}: {} journaled event(s) missing from the database (seqs {}..={})",
            missing.len(),
            missing[0],
            missing[missing.len() - 1]
        ));
    }
    let extra: Vec<u64> = stored_map
        .keys()
        .filter(|s| !journal_map.contains_key(s))
        .copied()
        .collect();
    if !extra.is_empty() {
        problems.push(format!(
            "{container}: {} stored event(s) not in the journal (seqs {:?})",
            extra.len(),
            &extra[..extra.len().min(10)]
        ));
    }
    let differing: Vec<u64> = journal_map
        .iter()
        .filter(|(s, v)| stored_map.get(s).is_some_and(|w| w != *v))
        .map(|(s, _)| *s)
        .collect();
    if let Some(first) = differing.first() {
        problems.push(format!(
            "{container}: {} event(s) differ from their journal line (seqs {:?}); seq {first}: journal {} / database {}",
            differing.len(),
            &differing[..differing.len().min(10)],
            truncate(&journal_map[first].to_string(), 200),
            truncate(&stored_map[first].to_string(), 200)
        ));
    }
    problems
}

fn signal(pid: i32, sig: &str) -> bool {
    let argv = std::fs::read(format!("/proc/{pid}/cmdline"))
        .map(|c| String::from_utf8_lossy(&c).replace('\0', " "))
        .unwrap_or_default();
    eprintln!(
        "chaos:   SIG{sig} -> pid {pid} ({})",
        truncate(argv.trim(), 120)
    );
    pid > 1
        && Command::new("kill")
            .args([&format!("-{sig}"), &pid.to_string()])
            .status()
            .is_ok_and(|s| s.success())
}

/// Looks for a process for up to 5 s (it may be between a fork and an exec).
fn retry(mut find: impl FnMut() -> Option<i32>) -> Option<i32> {
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        if let Some(pid) = find() {
            return Some(pid);
        }
        if Instant::now() >= deadline {
            return None;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Every process: pid -> (parent, argv).
fn processes() -> HashMap<i32, (i32, Vec<String>)> {
    let mut table = HashMap::new();
    for entry in std::fs::read_dir("/proc").into_iter().flatten().flatten() {
        let Ok(pid) = entry.file_name().to_string_lossy().parse::<i32>() else {
            continue;
        };
        let Ok(stat) = std::fs::read_to_string(entry.path().join("stat")) else {
            continue;
        };
        let Some(after) = stat.rfind(')').map(|i| &stat[i + 1..]) else {
            continue;
        };
        let Some(ppid) = after.split_whitespace().nth(1).and_then(|p| p.parse().ok()) else {
            continue;
        };
        let argv = std::fs::read(entry.path().join("cmdline"))
            .map(|c| {
                c.split(|b| *b == 0)
                    .filter(|a| !a.is_empty())
                    .map(|a| String::from_utf8_lossy(a).into_owned())
                    .collect()
            })
            .unwrap_or_default();
        table.insert(pid, (ppid, argv));
    }
    table
}

/// `root` and everything under it, parents first.
fn descendants(table: &HashMap<i32, (i32, Vec<String>)>, root: i32) -> Vec<i32> {
    let mut children: HashMap<i32, Vec<i32>> = HashMap::new();
    for (pid, (ppid, _)) in table {
        children.entry(*ppid).or_default().push(*pid);
    }
    let mut out = Vec::new();
    let mut queue = std::collections::VecDeque::from([root]);
    while let Some(p) = queue.pop_front() {
        out.push(p);
        let mut kids = children.get(&p).cloned().unwrap_or_default();
        kids.sort_unstable();
        queue.extend(kids);
    }
    out
}

fn argv0_is(argv: &[String], name: &str) -> bool {
    argv.first()
        .is_some_and(|a| a == name || a.ends_with(&format!("/{name}")))
}

/// The host pid of the session's tmux server: the `tmux` process under the agent (inside its
/// sandbox, if any), else the `tmux` process whose command line names the socket.
fn tmux_server_pid(agent: i32, socket: &Path) -> Option<i32> {
    let table = processes();
    let under_agent = descendants(&table, agent)
        .into_iter()
        .skip(1)
        .find(|p| table.get(p).is_some_and(|(_, argv)| argv0_is(argv, "tmux")));
    under_agent.or_else(|| {
        let socket = socket.to_string_lossy();
        table
            .iter()
            .filter(|(_, (_, argv))| {
                argv0_is(argv, "tmux") && argv.iter().any(|a| a.contains(socket.as_ref()))
            })
            .map(|(pid, _)| *pid)
            .min()
    })
}

/// Claude Code's host pid: the process under the session's tmux server whose command line
/// names it (not a shell that merely mentions it).
fn claude_pid(agent: i32, socket: &Path) -> Option<i32> {
    let server = tmux_server_pid(agent, socket)?;
    let table = processes();
    let under = descendants(&table, server);
    let names_claude = |p: &i32| {
        table
            .get(p)
            .is_some_and(|(_, argv)| argv.iter().any(|a| a.contains("claude")))
    };
    under
        .iter()
        .skip(1)
        .copied()
        .find(|p| {
            names_claude(p)
                && table
                    .get(p)
                    .is_some_and(|(_, argv)| !argv0_is(argv, "sh") && !argv0_is(argv, "bash"))
        })
        .or_else(|| under.iter().skip(1).copied().find(names_claude))
}

fn coordinator_pid(h: &Harness) -> Option<i32> {
    let out = h.run(&["coordinator", "status", "--json"]);
    let v: Value = serde_json::from_slice(&out.stdout).ok()?;
    find_key(&v, "pid")
        .and_then(|p| p.as_i64())
        .map(|p| p as i32)
}

fn find_key<'v>(v: &'v Value, key: &str) -> Option<&'v Value> {
    match v {
        Value::Object(map) => map
            .get(key)
            .or_else(|| map.values().find_map(|x| find_key(x, key))),
        Value::Array(items) => items.iter().find_map(|x| find_key(x, key)),
        _ => None,
    }
}

/// Writes zeros to `path` until the filesystem is full.
fn fill(path: &Path) {
    let Ok(mut file) = std::fs::File::create(path) else {
        return;
    };
    let chunk = vec![0u8; 1 << 20];
    while file.write_all(&chunk).is_ok() {}
    let _ = file.sync_all();
}

/// `docs/benchmarks/chaos.md`: what the suite does, how to run it, the latest figures.
pub fn render_doc(report: &Report, command: &str, date: &str, machine: &str) -> String {
    let figures = report.to_json();
    let mut faults = String::new();
    for (kind, n) in &report.faults {
        faults.push_str(&format!("| faults: {kind} | {n} |\n"));
    }
    let mut by_invariant: BTreeMap<&str, Vec<&Violation>> = BTreeMap::new();
    for v in &report.violations {
        by_invariant.entry(v.invariant).or_default().push(v);
    }
    let mut violations = String::new();
    if by_invariant.is_empty() {
        violations.push_str("None.\n");
    } else {
        violations.push_str("| invariant | violations | rounds | faults | round seeds (replay with `CHAOS_ROUND_SEED=<seed> scripts/chaos 1`) |\n|---|---|---|---|---|\n");
        for (invariant, vs) in &by_invariant {
            let kinds: BTreeSet<&str> = vs.iter().map(|v| v.fault.name()).collect();
            let seeds: BTreeSet<String> = vs.iter().map(|v| format!("`{:016x}`", v.seed)).collect();
            let rounds: BTreeSet<u64> = vs.iter().map(|v| v.round).collect();
            violations.push_str(&format!(
                "| {invariant} | {} | {} of {} | {} | {} |\n",
                vs.len(),
                rounds.len(),
                report.rounds,
                kinds.into_iter().collect::<Vec<_>>().join(", "),
                seeds.into_iter().collect::<Vec<_>>().join(" ")
            ));
        }
        violations.push_str("\nDetails:\n\n");
        for line in report.violation_lines() {
            violations.push_str(&format!("- {}\n", line.replace('|', "\\|")));
        }
    }
    let notes = if report.notes.is_empty() {
        "None.\n".to_string()
    } else {
        let unique: BTreeSet<&String> = report.notes.iter().collect();
        unique.iter().map(|n| format!("- {n}\n")).collect()
    };
    format!(
        r#"# Chaos suite

`scripts/chaos [ROUNDS] [SEED]` runs ROUNDS rounds (default 20) of random faults against real
sessions — the real `parhelia`, coordinator, `parhelia-agent`, tmux and Claude Code — on the
scripted model stand-in, and checks after each round, independently of the code under test,
that nothing was lost and that the product told the truth about what happened. The engine is
`tests/src/chaos.rs`; a fixed-seed version of a few rounds runs in the normal suite
(`tests/tests/e2e/chaos.rs`).

## A round

Planned entirely from the round's seed (a `fastrand` generator): one message, or two (the
second sent with `parhelia session send` while the first runs, so faults land in a later
turn). Bash turn `k` writes every missing `f1.txt ..= fk.txt` by rename (so a file is never
half-written), each message has one `Write` turn (`wm.txt`), some turns sleep 2 s to open
fault windows. The expected bytes of every file come from the seed, never from the product.
Sessions keep the default isolation (bubblewrap when it works), so a killed agent takes its
sandbox with it as a container would; the engine finds tmux and Claude Code by their host pids
in `/proc` (the `tmux` under the agent, the process under it whose command line names Claude).
Each round's `config.toml` makes a dead agent noticed within seconds (`reconciler.poll_interval_seconds
= 1`, `stale_threshold_seconds = 5`) and takes periodic checkpoints every 3 s.

One fault is injected once the stand-in has served a chosen turn (plus 0–1.5 s):

| fault | how |
|---|---|
| kill_agent | SIGKILL of `parhelia-agent` (pid from its `agent.json`) |
| term_agent | SIGTERM of the agent |
| kill_claude | SIGKILL of the Claude Code process under the session's tmux pane |
| kill_tmux | SIGKILL of the session's private tmux server |
| kill_coordinator | SIGKILL of the coordinator; `parhelia reconciler run --once --dry-run` (a command that needs the coordinator) starts a new one |
| kill_during_checkpoint | the turns write 24 MB of fresh random bytes; the engine polls the store's `tmp/` every 1 ms and SIGKILLs the agent when a checkpoint write is in progress (`checkpoint_windows_hit` counts the hits; a miss is noted and the agent is killed anyway) |
| disk_full | the round's whole state directory lives on a {TMPFS_SIZE} tmpfs (these machines run as root), which the engine fills with one file; the file is removed before the resume. When `mount` is not permitted (no CAP_SYS_ADMIN) these rounds are skipped and the figures say so in `notes` |

A quarter of the rounds add a second fault: the agent started by the first `parhelia resume`
is killed right after its restore. Recovery is driven the way a user would: `task show`
until the task stops running, `parhelia resume SESSION -m "Please continue."` (at most three
times) until it completes.

## Invariants (checked after every round)

| invariant | what is checked | how, independently |
|---|---|---|
| checkpoint_restorable | every finished checkpoint of every session of the task restores, and its `f*.txt` are exactly `f1..fk` with the script's bytes (`w*.txt` too) | manifests listed from the store directory (not `checkpoint list`), each restored with the checkpoint library into a scratch dir |
| checkpoint_whole | every checkpoint holds a workspace and a non-empty conversation once Claude Code had one: the safety checkpoint before a restore and the coordinator's `agent_gone` one (of what a dead agent's container left) when the model had been asked anything before the fault; one the live agent took, when it had been asked before the previous checkpoint was committed. Only a session's `start` checkpoint, taken before Claude Code exists, is the workspace alone by design | the restored `conversation` tree has files; the stand-in's request log (receive times) against the fault's time and the checkpoint ids' times |
| events_equal_journal | the events in the database equal the journal lines on the volume, container by container: none missing, none extra, none stored twice, payloads equal | journals read with serde_json, compared with `events` rows (after at most {ingest} s for ingestion) |
| spend_equals_served | the task's `cost_usd` (`task show --json`) and its ledger model rows equal the spend the stand-in served | the stand-in's request log × `tests/src/model_stand_in/pricing.rs`, compared with `same_cost` |
| spend_of_cut_turns_recorded | the same, where task and ledger agree but are below what was served: the spend of a turn the fault cut off was never charged. Not a violation when the shortfall is at most the cost of the responses no Claude Code transcript holds (killed before it wrote them: at most its stdout showed them, with their input counts but not their final output counts) and the task says its spend is unknown (`unknown_model_requests`); the round's notes say so | the stand-in's request log (message ids served) against the transcripts' text, and `task show --json` |
| state_after_fault | a turn killed in flight (its message's closing answer not yet served) is never `completed` before a resume; a disk-full round ends with a coded error naming the disk — not E502, not `running` | the stand-in's request log says which messages were answered |
| settles | the task stops running within {settle} s of a fault | `task show --json` |
| recovered | `parhelia resume` works and the task completes | exit status, `task show --json` |
| workspace_prefix | the live workspace ends as a prefix with the script's bytes | read from disk |
| harness | the round itself could run (a panic in the engine) | |

## How to run

```
scripts/chaos                 # 20 rounds, seed 1
scripts/chaos 100 7           # 100 rounds, seed 7
CHAOS_ROUND_SEED=<hex> scripts/chaos 1    # replay one round from a violation's seed
CHAOS_FAULTS=kill_claude,kill_tmux scripts/chaos 10   # only these faults
```

It builds the binaries, prints progress on stderr, prints ONE JSON line of figures on stdout,
rewrites this file, and exits 1 when any invariant was violated. Root is needed for the
disk-full rounds (tmpfs). A round takes 20–60 s on a 2-core machine.

## Latest figures

Command: `{command}` — {date} on {machine}.

| figure | value |
|---|---|
| rounds | {rounds} |
{faults}| second faults (resumed agent killed) | {second} |
| checkpoint writes hit by kill_during_checkpoint | {hits} |
| checkpoints verified (restored and compared) | {checkpoints} |
| events compared | {events} |
| spend comparisons | {spend} |
| violations | {violation_count} |
| elapsed | {elapsed} s |

### Violations by invariant

{violations}
### Notes

{notes}
### Figures as printed

```json
{figures}
```
"#,
        ingest = INGEST_WAIT.as_secs(),
        settle = SETTLE_WAIT.as_secs(),
        rounds = report.rounds,
        second = report.second_faults,
        hits = report.checkpoint_windows_hit,
        checkpoints = report.checkpoints_verified,
        events = report.events_compared,
        spend = report.spend_compared,
        violation_count = report.violations.len(),
        elapsed = report.elapsed_s,
        figures = serde_json::to_string(&figures).unwrap_or_default(),
    )
}

/// Now, in milliseconds since the Unix epoch.
fn epoch_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plans_are_reproducible_from_their_seed() {
        let a = RoundPlan::from_seed(42, &Fault::ALL);
        let b = RoundPlan::from_seed(42, &Fault::ALL);
        assert_eq!(format!("{a:?}"), format!("{b:?}"));
        assert_eq!(a.script(), b.script());
        assert_ne!(round_seed(1, 0), round_seed(1, 1));
    }

    #[test]
    fn a_fault_in_the_last_message_aims_at_a_bash_turn_while_the_session_runs() {
        for seed in 0..500 {
            let plan = RoundPlan::from_seed(seed, &Fault::ALL);
            if plan.fault_message != plan.messages() {
                continue;
            }
            let files = plan.files_per_message[plan.fault_message as usize - 1] as usize;
            assert!(
                (1..=files).contains(&plan.fault_after_turns),
                "seed {seed}: {plan:?}"
            );
            let first: usize = plan.files_per_message[..plan.fault_message as usize - 1]
                .iter()
                .map(|n| *n as usize)
                .sum();
            if !plan.sleepy[first + plan.fault_after_turns - 1] {
                assert!(plan.fault_delay_ms < 300, "seed {seed}: {plan:?}");
            }
        }
    }

    #[test]
    fn closing_turns_are_the_texts() {
        for seed in 0..50 {
            let plan = RoundPlan::from_seed(seed, &Fault::ALL);
            let script = plan.script();
            let closing = plan.closing_turns();
            assert_eq!(closing.len() as u32, plan.messages());
            for (i, turn) in script.turns.iter().enumerate() {
                let is_text = matches!(turn.reply, crate::model_stand_in::Reply::Text(_));
                assert_eq!(is_text, closing.contains(&i), "seed {seed} turn {i}");
            }
        }
    }

    #[test]
    fn the_prefix_check_accepts_prefixes_only() {
        let plan = RoundPlan::from_seed(3, &Fault::ALL);
        let dir = tempfile::tempdir().unwrap();
        assert_eq!(check_prefix(&plan, dir.path()), Ok(0));
        std::fs::write(dir.path().join("f1.txt"), file_content(plan.seed, 1)).unwrap();
        std::fs::write(dir.path().join("w1.txt"), write_content(plan.seed, 1)).unwrap();
        assert_eq!(check_prefix(&plan, dir.path()), Ok(1));
        std::fs::write(dir.path().join("f3.txt"), file_content(plan.seed, 3)).unwrap();
        assert!(check_prefix(&plan, dir.path()).is_err(), "a gap");
        std::fs::write(dir.path().join("f2.txt"), "torn").unwrap();
        assert!(check_prefix(&plan, dir.path()).is_err(), "wrong bytes");
    }

    #[test]
    fn event_comparison_names_loss_duplicates_and_changes() {
        let e = |seq: u64, t: &str| (seq, json!({"seq": seq, "kind": {t: {}}}));
        let journal = vec![e(1, "a"), e(2, "b"), e(3, "c")];
        assert!(compare_events("c", &journal, &journal).is_empty());
        let lost = compare_events("c", &journal, &journal[..2]);
        assert!(lost[0].contains("1 journaled event(s) missing"), "{lost:?}");
        let mut twice = journal.clone();
        twice.push(e(2, "b"));
        assert!(compare_events("c", &journal, &twice)[0].contains("stored twice"));
        let changed = vec![e(1, "a"), e(2, "x"), e(3, "c")];
        assert!(compare_events("c", &journal, &changed)[0].contains("differ"));
    }

    #[test]
    fn a_torn_last_journal_line_is_left_out() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("j.jsonl");
        std::fs::write(&path, "{\"seq\":1}\n{\"seq\":2}\n{\"seq\":3,\"ki").unwrap();
        let lines = read_journal(&path);
        assert_eq!(lines.iter().map(|l| l.0).collect::<Vec<_>>(), [1, 2]);
    }
}
