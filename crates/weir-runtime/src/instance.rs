//! The instance id, stable per state directory, and the lock that keeps two processes out of
//! one state directory.

use std::fs::{self, File, OpenOptions};
use std::io::Write;
use std::path::Path;

use weir_core::Config;

use crate::RuntimeError;

/// Holds the state directory's lock for as long as it lives.
#[derive(Debug)]
pub(crate) struct StateDirLock {
    _file: File,
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> RuntimeError + '_ {
    move |source| RuntimeError::StateDir {
        path: path.to_path_buf(),
        source,
    }
}

/// Locks `{state.dir}/{application.id}` and returns this instance's id: `instance.id` if set,
/// else the id persisted in the directory, else a new random id, persisted.
pub(crate) fn resolve(config: &Config) -> Result<(String, StateDirLock), RuntimeError> {
    let dir = config.app_state_dir();
    fs::create_dir_all(&dir).map_err(io(&dir))?;

    let lock_path = dir.join(".lock");
    let file = OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&lock_path)
        .map_err(io(&lock_path))?;
    if file.try_lock().is_err() {
        // The holder wrote who it is into the lock file (a read ignores the advisory lock).
        let holder = fs::read_to_string(&lock_path).unwrap_or_default();
        let holder = match holder.trim() {
            "" => "another weir process".to_string(),
            h => format!("another weir process ({h})"),
        };
        return Err(RuntimeError::StateDir {
            path: dir,
            source: std::io::Error::other(format!(
                "{holder} of this application is using this state directory; give each \
                 instance its own state.dir, or stop that process first"
            )),
        });
    }
    let mut file = file;
    // Who holds the lock, for the refusal a second process gets.
    let started = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    let host = fs::read_to_string("/proc/sys/kernel/hostname").unwrap_or_default();
    let _ = file.set_len(0).and_then(|()| {
        write!(
            file,
            "pid {} on {}, since unix time {started}",
            std::process::id(),
            host.trim()
        )
    });
    let lock = StateDirLock { _file: file };

    if let Some(id) = &config.instance_id {
        return Ok((id.clone(), lock));
    }
    let id_path = dir.join("instance.id");
    match fs::read_to_string(&id_path) {
        Ok(id) if !id.trim().is_empty() => return Ok((id.trim().to_string(), lock)),
        Ok(_) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(io(&id_path)(e)),
    }
    let id = format!("{:016x}", rand::random::<u64>());
    let tmp = dir.join("instance.id.tmp");
    let mut f = File::create(&tmp).map_err(io(&tmp))?;
    f.write_all(id.as_bytes()).map_err(io(&tmp))?;
    f.sync_all().map_err(io(&tmp))?;
    fs::rename(&tmp, &id_path).map_err(io(&id_path))?;
    Ok((id, lock))
}
