//! The data directory's secrets: `token.key` (the signing key, 64 hex digits) and
//! `admin.token` (an admin token for the CLI on the same machine). Both are written mode
//! 0600 in a directory created mode 0700, and a key readable by others is refused, as ssh
//! refuses such a private key.

use std::fs;
use std::io::Write;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::time::Duration;

use super::token::{KEY_BYTES, TokenKey, TokenSpec, now_secs};
use super::{Role, TokenError};

/// File name of the signing key in the data directory.
pub const KEY_FILE: &str = "token.key";
/// File name of the admin token in the data directory.
pub const ADMIN_TOKEN_FILE: &str = "admin.token";
/// Lifetime of the admin token written at start.
pub const ADMIN_TOKEN_TTL: Duration = Duration::from_secs(365 * 24 * 3600);
/// An admin token closer than this to its expiry is replaced at start.
const ADMIN_TOKEN_RENEW: u64 = 30 * 24 * 3600;

/// Creates `dir` (mode 0700) if it is missing.
pub fn ensure_dir(dir: &Path) -> Result<(), String> {
    if dir.is_dir() {
        return Ok(());
    }
    fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)
        .map_err(|e| format!("cannot create the data directory {}: {e}", dir.display()))
}

/// Writes `contents` to `path` mode 0600, replacing it atomically (a temporary file in the
/// same directory, then a rename), so a reader never sees half a secret.
pub fn write_secret(path: &Path, contents: &str) -> Result<(), String> {
    let tmp = path.with_extension("tmp");
    let _ = fs::remove_file(&tmp);
    let mut f = fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(&tmp)
        .map_err(|e| format!("cannot write {}: {e}", tmp.display()))?;
    f.write_all(contents.as_bytes())
        .and_then(|()| f.sync_all())
        .map_err(|e| format!("cannot write {}: {e}", tmp.display()))?;
    fs::rename(&tmp, path).map_err(|e| format!("cannot write {}: {e}", path.display()))
}

/// Reads a secret, refusing one that others than its owner may read.
pub fn read_secret(path: &Path) -> Result<String, String> {
    let meta = fs::metadata(path).map_err(|e| format!("cannot read {}: {e}", path.display()))?;
    let mode = meta.permissions().mode();
    if mode & 0o077 != 0 {
        return Err(format!(
            "{} is accessible by others (mode {:o}); run chmod 600 on it",
            path.display(),
            mode & 0o777
        ));
    }
    fs::read_to_string(path).map_err(|e| format!("cannot read {}: {e}", path.display()))
}

/// Path of the key file in `data_dir`.
pub fn key_path(data_dir: &Path) -> PathBuf {
    data_dir.join(KEY_FILE)
}

/// Path of the admin token in `data_dir`.
pub fn admin_token_path(data_dir: &Path) -> PathBuf {
    data_dir.join(ADMIN_TOKEN_FILE)
}

/// Loads the signing key from `data_dir`, or, when `create` and there is none, makes one.
/// Returns the key and whether it was created.
pub fn load_key(data_dir: &Path, create: bool) -> Result<(TokenKey, bool), String> {
    let path = key_path(data_dir);
    if !path.exists() {
        if !create {
            return Err(format!(
                "no signing key at {}: start the engine once with this --data-dir (it creates one)",
                path.display()
            ));
        }
        ensure_dir(data_dir)?;
        let (key, bytes) = TokenKey::generate()?;
        let hex: String = bytes.iter().map(|b| format!("{b:02x}")).collect();
        write_secret(&path, &format!("{hex}\n"))?;
        return Ok((key, true));
    }
    let text = read_secret(&path)?;
    let bytes = parse_key(text.trim()).map_err(|e| format!("{}: {e}", path.display()))?;
    Ok((TokenKey::from_bytes(&bytes), false))
}

fn parse_key(hex: &str) -> Result<[u8; KEY_BYTES], String> {
    if hex.len() != 2 * KEY_BYTES || !hex.bytes().all(|b| b.is_ascii_hexdigit()) {
        return Err(format!(
            "expected {} hex digits (a {KEY_BYTES}-byte key)",
            2 * KEY_BYTES
        ));
    }
    let mut out = [0u8; KEY_BYTES];
    for (i, byte) in out.iter_mut().enumerate() {
        *byte = u8::from_str_radix(&hex[2 * i..2 * i + 2], 16)
            .map_err(|_| "not hexadecimal".to_string())?;
    }
    Ok(out)
}

/// Makes sure `<data_dir>/admin.token` holds a valid admin token for `key`: writes one when
/// it is missing, does not verify (another key, expired) or expires within 30 days.
/// Returns whether it wrote one.
pub fn ensure_admin_token(data_dir: &Path, key: &TokenKey) -> Result<bool, String> {
    let path = admin_token_path(data_dir);
    let current = path
        .exists()
        .then(|| read_secret(&path))
        .transpose()?
        .map(|t| key.verify(t.trim()));
    let fresh = |r: &Result<super::Claims, TokenError>| {
        r.as_ref()
            .is_ok_and(|c| c.roles.contains(&Role::Admin) && c.exp > now_secs() + ADMIN_TOKEN_RENEW)
    };
    if current.as_ref().is_some_and(fresh) {
        return Ok(false);
    }
    let token = key
        .issue(&TokenSpec {
            subject: "admin".into(),
            project: String::new(),
            roles: vec![Role::Admin],
            ttl: ADMIN_TOKEN_TTL,
        })
        .map_err(|e| e.to_string())?;
    write_secret(&path, &format!("{token}\n"))?;
    Ok(true)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn key_is_created_once_private_and_reloaded() {
        let dir = tempfile::tempdir().unwrap();
        let data = dir.path().join("data");
        assert!(
            load_key(&data, false)
                .unwrap_err()
                .contains("no signing key")
        );
        let (k1, created) = load_key(&data, true).unwrap();
        assert!(created);
        let mode = |p: &Path| fs::metadata(p).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode(&key_path(&data)), 0o600);
        assert_eq!(mode(&data), 0o700);
        let (k2, created) = load_key(&data, true).unwrap();
        assert!(!created);
        // Same key: a token from one verifies with the other.
        let t = k1
            .issue(&TokenSpec {
                subject: "s".into(),
                project: String::new(),
                roles: vec![Role::Admin],
                ttl: Duration::from_secs(60),
            })
            .unwrap();
        assert!(k2.verify(&t).is_ok());

        fs::set_permissions(key_path(&data), fs::Permissions::from_mode(0o644)).unwrap();
        let e = load_key(&data, true).unwrap_err();
        assert!(e.contains("chmod 600"), "{e}");
        fs::set_permissions(key_path(&data), fs::Permissions::from_mode(0o600)).unwrap();
        fs::write(key_path(&data), "abcd\n").unwrap();
        assert!(load_key(&data, true).unwrap_err().contains("hex digits"));
    }

    #[test]
    fn admin_token_is_written_kept_and_replaced() {
        let dir = tempfile::tempdir().unwrap();
        let (key, _) = load_key(dir.path(), true).unwrap();
        assert!(ensure_admin_token(dir.path(), &key).unwrap());
        let path = admin_token_path(dir.path());
        assert_eq!(
            fs::metadata(&path).unwrap().permissions().mode() & 0o777,
            0o600
        );
        let first = fs::read_to_string(&path).unwrap();
        let claims = key.verify(first.trim()).unwrap();
        assert_eq!(claims.roles, vec![Role::Admin]);
        assert!(!ensure_admin_token(dir.path(), &key).unwrap(), "kept");
        // A new key makes the old token useless: it is replaced.
        let (other, _) = TokenKey::generate().unwrap();
        assert!(ensure_admin_token(dir.path(), &other).unwrap());
        let second = fs::read_to_string(&path).unwrap();
        assert!(other.verify(second.trim()).is_ok());
    }
}
