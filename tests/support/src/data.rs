//! Test content, and media written behind the API; what is left on local disk.

use media_node::domain::MediaId;

/// Every file under `root` (any kind but a directory, hidden ones included), as sorted
/// paths relative to it with `/` between components. A root that does not exist is empty.
pub fn files_under(root: &std::path::Path) -> Vec<String> {
    let mut files = Vec::new();
    let mut dirs = vec![root.to_path_buf()];
    while let Some(dir) = dirs.pop() {
        let entries = match std::fs::read_dir(&dir) {
            Ok(entries) => entries,
            Err(err) if err.kind() == std::io::ErrorKind::NotFound => continue,
            Err(err) => panic!("reading {}: {err}", dir.display()),
        };
        for entry in entries {
            let entry = entry.unwrap();
            let path = entry.path();
            // A directory may vanish between listing and looking (clean-ups run meanwhile).
            match entry.file_type() {
                Ok(kind) if kind.is_dir() => dirs.push(path),
                Ok(_) => {
                    let relative = path.strip_prefix(root).unwrap();
                    let parts: Vec<_> = relative
                        .components()
                        .map(|c| c.as_os_str().to_string_lossy().into_owned())
                        .collect();
                    files.push(parts.join("/"));
                }
                Err(err) if err.kind() == std::io::ErrorKind::NotFound => {}
                Err(err) => panic!("reading {}: {err}", path.display()),
            }
        }
    }
    files.sort();
    files
}

/// Deterministic, non-repeating test content.
pub fn content(len: usize, seed: u8) -> Vec<u8> {
    let mut state = u32::from(seed).wrapping_mul(2_654_435_761).wrapping_add(1);
    (0..len)
        .map(|_| {
            state ^= state << 13;
            state ^= state >> 17;
            state ^= state << 5;
            state as u8
        })
        .collect()
}

pub fn sha256_hex(bytes: &[u8]) -> String {
    use sha2::Digest;
    hex::encode(sha2::Sha256::digest(bytes))
}

/// `n` ready media that expired a minute ago, each with a small object.
pub async fn seed_expired(
    metadata: &media_node::metadata::Metadata,
    storage: &media_node::storage::Storage,
    n: usize,
) -> Vec<MediaId> {
    let expires_at = chrono::Utc::now() - chrono::Duration::minutes(1);
    seed(metadata, storage, n, expires_at).await
}

/// `n` ready media expiring at `expires_at`, each with a small object, written behind the
/// API (32 at a time) for speed.
pub async fn seed(
    metadata: &media_node::metadata::Metadata,
    storage: &media_node::storage::Storage,
    n: usize,
    expires_at: chrono::DateTime<chrono::Utc>,
) -> Vec<MediaId> {
    use futures_util::StreamExt;
    use object_store::ObjectStoreExt;
    let created_at = expires_at - chrono::Duration::hours(24);
    futures_util::stream::iter(0..n)
        .map(|i| async move {
            let id = MediaId::new_random();
            metadata
                .insert_uploading(&media_node::metadata::NewMedia {
                    id,
                    owner: media_node::domain::AccountId::parse("seed").unwrap(),
                    extension: media_node::domain::FileExtension::parse("bin").unwrap(),
                    created_at,
                    expires_at,
                })
                .await
                .unwrap();
            storage
                .store()
                .put(&storage.key(id), format!("object {i}").into_bytes().into())
                .await
                .unwrap();
            metadata
                .mark_ready(id, 8, "00", chrono::DateTime::UNIX_EPOCH)
                .await
                .unwrap();
            id
        })
        .buffer_unordered(32)
        .collect()
        .await
}
