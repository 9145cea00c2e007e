//! The node's libp2p identity: an ed25519 key in a file of the data directory, created on
//! first start (mode 0600, written to a temporary file and renamed, so a crash never leaves
//! half a key) and reused after, so the node keeps its DHT peer id across restarts.

use std::io::Write;
use std::path::Path;

use libp2p::identity::Keypair;

use crate::DhtError;

/// Loads the key at `path`, or creates one there.
pub(crate) fn load_or_create(path: &Path) -> Result<Keypair, DhtError> {
    let io = |op: &'static str| {
        move |source| DhtError::Identity {
            op,
            path: path.to_path_buf(),
            source,
        }
    };
    match std::fs::read(path) {
        Ok(bytes) => {
            return Keypair::from_protobuf_encoding(&bytes).map_err(|e| DhtError::BadIdentity {
                path: path.to_path_buf(),
                reason: e.to_string(),
            });
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(io("read")(e)),
    }
    let keypair = Keypair::generate_ed25519();
    let bytes = keypair
        .to_protobuf_encoding()
        .map_err(|e| DhtError::BadIdentity {
            path: path.to_path_buf(),
            reason: e.to_string(),
        })?;
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir).map_err(io("create the directory of"))?;
    }
    let tmp = path.with_extension("tmp");
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create(true).truncate(true);
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
    let mut file = options.open(&tmp).map_err(io("create"))?;
    file.write_all(&bytes).map_err(io("write"))?;
    file.sync_all().map_err(io("sync"))?;
    drop(file);
    std::fs::rename(&tmp, path).map_err(io("rename into"))?;
    Ok(keypair)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_key_is_created_private_and_reused() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("sub/dht.key");
        let a = load_or_create(&path).unwrap();
        let b = load_or_create(&path).unwrap();
        assert_eq!(a.public().to_peer_id(), b.public().to_peer_id());
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = std::fs::metadata(&path).unwrap().permissions().mode();
            assert_eq!(mode & 0o777, 0o600);
        }
        std::fs::write(&path, b"garbage").unwrap();
        assert!(matches!(
            load_or_create(&path),
            Err(DhtError::BadIdentity { .. })
        ));
    }
}
