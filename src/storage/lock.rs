//! An exclusive lock on the data dir, so that two processes never share it.
//! The engine has its own lock too; ours comes first and names the holder.

use std::{
    fs::{File, OpenOptions, TryLockError},
    io::{Read, Seek, Write},
    path::Path,
};

use crate::error::{Error, Result};

/// Held for as long as the node runs; the OS drops the lock when the process
/// dies, even by kill -9.
#[derive(Debug)]
pub struct DirLock {
    _file: File,
}

impl DirLock {
    /// Takes the lock on `dir/meshkv.lock` or says who holds it.
    pub fn acquire(dir: &Path) -> Result<Self> {
        let path = dir.join("meshkv.lock");
        let mut file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(&path)
            .map_err(|e| Error::io(format!("cannot open {}", path.display()), e))?;
        match file.try_lock() {
            Ok(()) => {}
            Err(TryLockError::WouldBlock) => {
                let mut pid = String::new();
                let _ = file.read_to_string(&mut pid);
                let pid = pid.trim().to_string();
                return Err(Error::Locked {
                    dir: dir.to_path_buf(),
                    pid: (!pid.is_empty()).then_some(pid),
                });
            }
            Err(TryLockError::Error(e)) => {
                return Err(Error::io(format!("cannot lock {}", path.display()), e))
            }
        }
        let pid = std::process::id().to_string();
        file.set_len(0)
            .and_then(|()| file.rewind())
            .and_then(|()| file.write_all(pid.as_bytes()))
            .map_err(|e| Error::io(format!("cannot write {}", path.display()), e))?;
        Ok(Self { _file: file })
    }
}
