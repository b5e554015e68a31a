//! The run folder a training process owns: locked for the process's life ([`RunLock`]), and
//! a folder that already holds a run continued, moved aside (never deleted) or refused
//! ([`claim`]).

use crate::checkpoint;
use crate::error::{Result, TrainError};
use std::path::{Path, PathBuf};

/// The name of the lock file in a run folder.
pub const LOCK_FILE: &str = ".lock";

/// An exclusive lock (`flock`) on a run folder's [`LOCK_FILE`], held while it lives; the OS
/// releases it when the process ends, however it ends, so a crash never leaves it behind.
pub(crate) struct RunLock {
    _file: std::fs::File,
}

impl RunLock {
    /// Creates `dir` if needed and locks it, or says which folder another run holds.
    fn acquire(dir: &Path) -> Result<RunLock> {
        std::fs::create_dir_all(dir).map_err(TrainError::io(dir, "creating the output folder"))?;
        let path = dir.join(LOCK_FILE);
        let file = std::fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&path)
            .map_err(TrainError::io(&path, "opening the run lock"))?;
        match file.try_lock() {
            Ok(()) => Ok(RunLock { _file: file }),
            Err(std::fs::TryLockError::WouldBlock) => {
                Err(TrainError::RunFolderLocked { dir: dir.to_path_buf(), lock: path })
            }
            Err(std::fs::TryLockError::Error(e)) => Err(TrainError::io(&path, "locking the run folder")(e)),
        }
    }
}

/// What in `dir` makes it a run's folder (what a run writes), by name.
fn run_files(dir: &Path) -> Vec<String> {
    let Ok(rd) = std::fs::read_dir(dir) else { return vec![] };
    let fixed =
        ["metrics.jsonl", "summary.json", "loss.svg", "echo.svg", "adapter", "best-adapter", checkpoint::POINTER];
    let mut found: Vec<String> = rd
        .filter_map(|e| e.ok())
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| fixed.contains(&n.as_str()) || n.starts_with("checkpoint-") || n.starts_with(".checkpoint"))
        .collect();
    found.sort();
    found
}

/// Renames the run folder `dir` to `<dir>.old-<unix time>` (`-2`, `-3`, ... when taken)
/// and returns the new name.
fn move_aside(dir: &Path) -> Result<PathBuf> {
    let secs = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0);
    let base = dir.as_os_str().to_string_lossy().trim_end_matches('/').to_string();
    let mut aside = PathBuf::from(format!("{base}.old-{secs}"));
    let mut n = 1;
    while aside.symlink_metadata().is_ok() {
        n += 1;
        aside = PathBuf::from(format!("{base}.old-{secs}-{n}"));
    }
    std::fs::rename(dir, &aside)
        .map_err(|e| TrainError::Other(format!("{}: cannot move it to {}: {e}", dir.display(), aside.display())))?;
    Ok(aside)
}

/// Locks `out_dir` for this process. Without `resume`, a folder holding a run is refused, or
/// with `overwrite` moved aside first.
pub(crate) fn claim(out_dir: &Path, resume: bool, overwrite: bool) -> Result<RunLock> {
    let mut lock = RunLock::acquire(out_dir)?;
    if !resume {
        let found = run_files(out_dir);
        if !found.is_empty() {
            if !overwrite {
                return Err(TrainError::RunFolderInUse { dir: out_dir.to_path_buf(), found });
            }
            let aside = move_aside(out_dir)?;
            println!("--overwrite: the run that was in {} is now in {}", out_dir.display(), aside.display());
            lock = RunLock::acquire(out_dir)?;
        }
    }
    Ok(lock)
}
