//! Pipelines as child processes, to crash them for real.

use std::ffi::OsStr;
use std::io::Read;
use std::path::PathBuf;
use std::process::{Child, Command, ExitStatus, Output, Stdio};
use std::time::{Duration, Instant};

/// The path of a cargo example binary built next to the running test binary
/// (`target/<profile>/examples/<name>`). `cargo test` builds the examples before the tests.
pub fn example_bin(name: &str) -> PathBuf {
    let exe = std::env::current_exe().expect("current_exe");
    // target/<profile>/deps/<test-binary>
    let profile_dir = exe
        .parent()
        .and_then(|deps| deps.parent())
        .expect("test binary lives in target/<profile>/deps");
    let path = profile_dir.join("examples").join(name);
    assert!(
        path.exists(),
        "example binary {} is missing: build it with `cargo build --examples` (cargo test does this)",
        path.display()
    );
    path
}

/// A command for `program` that does not inherit the test's `WEIR_*` environment variables:
/// every setting a child gets is one the test gave it (a `WEIR_GUARANTEE` or `WEIR_FAILPOINT`
/// left in the shell would otherwise change what the test runs, silently).
pub fn command(program: impl AsRef<OsStr>) -> Command {
    let mut cmd = Command::new(program);
    for (name, _) in std::env::vars_os() {
        if name.to_string_lossy().starts_with("WEIR_") {
            cmd.env_remove(name);
        }
    }
    cmd
}

/// [`command`] for a cargo example ([`example_bin`]).
pub fn example_command(name: &str) -> Command {
    command(example_bin(name))
}

/// [`Command::output`] with a deadline, for every child a test runs to its exit.
pub trait OutputWithin {
    /// Runs the command to its exit with its output captured; a child still running after
    /// `timeout` is SIGKILLed and the test fails, naming the program, its arguments and what it
    /// had printed, instead of hanging the suite.
    fn output_within(&mut self, timeout: Duration) -> Output;
}

impl OutputWithin for Command {
    fn output_within(&mut self, timeout: Duration) -> Output {
        let name = std::iter::once(self.get_program())
            .chain(self.get_args())
            .map(|a| a.to_string_lossy().into_owned())
            .collect::<Vec<_>>()
            .join(" ");
        output_within(&name, self, timeout)
    }
}

/// Runs `cmd` to its exit with its output captured, as [`Command::output`] does, but with a
/// deadline: a child still running after `timeout` is SIGKILLed and the test fails, naming
/// `name` and what it had printed, instead of hanging the suite.
pub fn output_within(name: &str, cmd: &mut Command, timeout: Duration) -> Output {
    try_output_within(cmd, timeout).unwrap_or_else(|e| panic!("{name}: {e}"))
}

/// [`output_within`] that returns what went wrong (it did not start; it did not exit within
/// `timeout` and was killed, with what it had printed) instead of panicking.
pub fn try_output_within(cmd: &mut Command, timeout: Duration) -> Result<Output, String> {
    cmd.stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let mut child = cmd.spawn().map_err(|e| format!("cannot start: {e}"))?;
    let drain = |pipe: Option<Box<dyn Read + Send>>| {
        std::thread::spawn(move || {
            let mut buf = Vec::new();
            if let Some(mut p) = pipe {
                let _ = p.read_to_end(&mut buf);
            }
            buf
        })
    };
    let stdout = drain(
        child
            .stdout
            .take()
            .map(|p| Box::new(p) as Box<dyn Read + Send>),
    );
    let stderr = drain(
        child
            .stderr
            .take()
            .map(|p| Box::new(p) as Box<dyn Read + Send>),
    );
    let deadline = Instant::now() + timeout;
    let status = loop {
        if let Some(status) = child.try_wait().map_err(|e| format!("waiting: {e}"))? {
            break status;
        }
        if Instant::now() >= deadline {
            let stacks = thread_stacks(child.id());
            let _ = child.kill();
            let _ = child.wait();
            let out = stdout.join().unwrap_or_default();
            let err = stderr.join().unwrap_or_default();
            return Err(format!(
                "did not exit within {timeout:?}; killed. Its stdout:\n{}\nits stderr:\n{}\nits threads:\n{stacks}",
                String::from_utf8_lossy(&out),
                String::from_utf8_lossy(&err)
            ));
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    Ok(Output {
        status,
        stdout: stdout.join().unwrap_or_default(),
        stderr: stderr.join().unwrap_or_default(),
    })
}

/// A child process that is SIGKILLed when dropped.
#[derive(Debug)]
pub struct ChildProcess {
    child: Option<Child>,
    name: String,
}

impl ChildProcess {
    /// Spawns `cmd`.
    pub fn spawn(name: &str, mut cmd: Command) -> Self {
        let child = cmd
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {name}: {e}"));
        Self {
            child: Some(child),
            name: name.to_string(),
        }
    }

    /// The process id.
    pub fn id(&self) -> u32 {
        self.child.as_ref().expect("running").id()
    }

    fn signal(&self, signal: i32) {
        if let Some(c) = &self.child {
            #[allow(unsafe_code)]
            // SAFETY: kill(2) on our own unreaped child.
            unsafe {
                libc::kill(c.id() as i32, signal);
            }
        }
    }

    /// Crashes it: SIGKILL, then reaps it.
    pub fn kill(mut self) {
        self.signal(libc::SIGKILL);
        if let Some(mut c) = self.child.take() {
            let _ = c.wait();
        }
    }

    /// Freezes it (SIGSTOP): it neither polls nor heartbeats, as in a long GC pause or a VM
    /// stall, until [`resume`](Self::resume).
    pub fn suspend(&self) {
        self.signal(libc::SIGSTOP);
    }

    /// Lets a [`suspend`](Self::suspend)ed process run again (SIGCONT).
    pub fn resume(&self) {
        self.signal(libc::SIGCONT);
    }

    /// Asks it to stop (SIGTERM) and waits up to `timeout` for its exit status.
    pub fn terminate(mut self, timeout: Duration) -> ExitStatus {
        self.signal(libc::SIGTERM);
        self.wait(timeout)
    }

    /// Waits up to `timeout` for it to exit by itself.
    pub fn wait(&mut self, timeout: Duration) -> ExitStatus {
        let deadline = Instant::now() + timeout;
        let child = self.child.as_mut().expect("running");
        loop {
            if let Some(status) = child.try_wait().expect("try_wait") {
                self.child = None;
                return status;
            }
            if Instant::now() >= deadline {
                let stacks = thread_stacks(child.id());
                panic!(
                    "{} did not exit within {timeout:?}; its threads:\n{stacks}",
                    self.name
                );
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Whether it is still running.
    pub fn is_running(&mut self) -> bool {
        matches!(self.child.as_mut().map(|c| c.try_wait()), Some(Ok(None)))
    }
}

impl Drop for ChildProcess {
    fn drop(&mut self) {
        self.signal(libc::SIGKILL);
        if let Some(mut c) = self.child.take() {
            let _ = c.wait();
        }
    }
}

/// The threads' stacks of a hung process, from gdb when it is installed (for the panic message).
fn thread_stacks(pid: u32) -> String {
    // gdb itself gets a deadline (coreutils' timeout): a stack dump must not hang the test.
    let out = std::process::Command::new("timeout")
        .args([
            "30",
            "gdb",
            "-p",
            &pid.to_string(),
            "-batch",
            "-ex",
            "thread apply all bt 30",
        ])
        .output();
    match out {
        Ok(o) => {
            let text = String::from_utf8_lossy(&o.stdout);
            text.lines()
                .filter(|l| l.starts_with('#') || l.starts_with("Thread"))
                .collect::<Vec<_>>()
                .join("\n")
        }
        Err(e) => format!("(no stacks: gdb did not run: {e})"),
    }
}
