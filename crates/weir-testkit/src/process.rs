//! Pipelines as child processes, to crash them for real.

use std::path::PathBuf;
use std::process::{Child, Command, ExitStatus};
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
    let out = std::process::Command::new("gdb")
        .args([
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
