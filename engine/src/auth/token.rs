//! Bearer tokens: JWTs signed HS256 with the engine's 32-byte key. The key never leaves the
//! engine's data directory, so only the engine (or `berth-engine token issue` next to it)
//! can mint tokens; deleting `token.key` revokes every token at the next start.
//!
//! A token carries `sub` (who), `project` (where a member or reader acts), `roles`, `iat`,
//! `exp` and `iss = "berth"`. Verification checks the signature, the issuer and the expiry
//! with no leeway (the engine both issues and checks, so there is no clock skew to absorb).

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use jsonwebtoken::errors::ErrorKind;
use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header, Validation};
use serde::{Deserialize, Serialize};

use super::{Caller, Proof, Role};

/// Length of the signing key, in bytes.
pub const KEY_BYTES: usize = 32;

/// The `iss` claim of every token.
pub const ISSUER: &str = "berth";

/// Longest lifetime a token may be issued for (a typo like `--ttl 80000d` is refused).
pub const MAX_TTL: Duration = Duration::from_secs(5 * 365 * 24 * 3600);

/// Why a token was refused. Every variant is answered UNAUTHENTICATED.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TokenError {
    /// Past its `exp`.
    #[error("the token expired {0} s ago; issue a new one (berth-engine token issue)")]
    Expired(u64),
    /// Signed with another key (forged, or from before `token.key` changed).
    #[error("the token's signature does not verify: it was not issued by this engine's key")]
    BadSignature,
    /// Not a token at all, or missing a claim.
    #[error("malformed token: {0}")]
    Malformed(String),
}

/// Why a token could not be issued; names the field.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid {field}: {reason}")]
pub struct IssueError {
    /// The offending field (`project`, `roles`, `subject`, `ttl`).
    pub field: &'static str,
    /// What is wrong with it.
    pub reason: String,
}

fn issue_error(field: &'static str, reason: impl Into<String>) -> IssueError {
    IssueError {
        field,
        reason: reason.into(),
    }
}

/// A token's claims.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Claims {
    /// Who: a user name, a service name, or a node name for `node` tokens.
    pub sub: String,
    /// The project a member or reader acts in; empty for admins and nodes.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub project: String,
    /// Granted roles; never empty.
    pub roles: Vec<Role>,
    /// Issued at, seconds since the Unix epoch.
    pub iat: u64,
    /// Expires at, seconds since the Unix epoch.
    pub exp: u64,
    /// Always [`ISSUER`].
    pub iss: String,
}

impl Claims {
    /// The caller these claims describe.
    pub fn into_caller(self) -> Caller {
        Caller {
            subject: self.sub,
            project: self.project,
            roles: self.roles,
            proof: Proof::Token,
        }
    }
}

/// What to put in a new token.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TokenSpec {
    /// `sub`; for a `node` token, the node name it may register as.
    pub subject: String,
    /// `project`; required for `member` and `reader`.
    pub project: String,
    /// Granted roles; at least one; `node` cannot be combined with another.
    pub roles: Vec<Role>,
    /// Lifetime, up to [`MAX_TTL`].
    pub ttl: Duration,
}

impl TokenSpec {
    /// Checks the spec; the error names the field.
    pub fn validate(&self) -> Result<(), IssueError> {
        if self.roles.is_empty() {
            return Err(issue_error("roles", "at least one role is needed"));
        }
        if self.roles.contains(&Role::Node) && self.roles.len() > 1 {
            return Err(issue_error(
                "roles",
                "node cannot be combined with another role: a node's token is for its stream only",
            ));
        }
        let scoped = self
            .roles
            .iter()
            .any(|r| matches!(r, Role::Member | Role::Reader));
        if scoped && !self.roles.contains(&Role::Admin) && self.project.is_empty() {
            return Err(issue_error(
                "project",
                "member and reader tokens need a project (--project)",
            ));
        }
        check_text("subject", &self.subject, true)?;
        check_text("project", &self.project, false)?;
        if self.ttl.is_zero() || self.ttl > MAX_TTL {
            return Err(issue_error(
                "ttl",
                format!("must be between 1 s and {} days", MAX_TTL.as_secs() / 86400),
            ));
        }
        Ok(())
    }
}

fn check_text(field: &'static str, v: &str, required: bool) -> Result<(), IssueError> {
    if required && v.is_empty() {
        return Err(issue_error(field, "must not be empty"));
    }
    if v.chars().count() > 255 {
        return Err(issue_error(field, "longer than 255 characters"));
    }
    if v.chars().any(char::is_control) {
        return Err(issue_error(field, "contains control characters"));
    }
    Ok(())
}

/// Seconds since the Unix epoch.
pub fn now_secs() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

/// The engine's signing key.
#[derive(Clone)]
pub struct TokenKey {
    encoding: EncodingKey,
    decoding: DecodingKey,
    validation: Validation,
}

impl std::fmt::Debug for TokenKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("TokenKey(..)")
    }
}

impl TokenKey {
    /// A key from its bytes.
    pub fn from_bytes(bytes: &[u8; KEY_BYTES]) -> Self {
        let mut validation = Validation::new(Algorithm::HS256);
        validation.leeway = 0;
        validation.set_issuer(&[ISSUER]);
        validation.set_required_spec_claims(&["exp", "sub", "iss"]);
        // Expiry is checked by `verify`, which can then say by how much.
        validation.validate_exp = false;
        Self {
            encoding: EncodingKey::from_secret(bytes),
            decoding: DecodingKey::from_secret(bytes),
            validation,
        }
    }

    /// A fresh random key (from the operating system's generator) and its bytes.
    pub fn generate() -> Result<(Self, [u8; KEY_BYTES]), String> {
        let mut bytes = [0u8; KEY_BYTES];
        getrandom::fill(&mut bytes).map_err(|e| format!("no randomness for a key: {e}"))?;
        Ok((Self::from_bytes(&bytes), bytes))
    }

    /// Signs a token for `spec`, issued at `now` (seconds since the epoch).
    pub fn issue_at(&self, spec: &TokenSpec, now: u64) -> Result<String, IssueError> {
        spec.validate()?;
        let mut roles = spec.roles.clone();
        roles.sort();
        roles.dedup();
        let claims = Claims {
            sub: spec.subject.clone(),
            project: spec.project.clone(),
            roles,
            iat: now,
            exp: now.saturating_add(spec.ttl.as_secs().max(1)),
            iss: ISSUER.into(),
        };
        jsonwebtoken::encode(&Header::new(Algorithm::HS256), &claims, &self.encoding)
            .map_err(|e| issue_error("token", e.to_string()))
    }

    /// Signs a token for `spec`, issued now.
    pub fn issue(&self, spec: &TokenSpec) -> Result<String, IssueError> {
        self.issue_at(spec, now_secs())
    }

    /// Checks a token's signature, issuer and claims, and its expiry against `now`.
    pub fn verify_at(&self, token: &str, now: u64) -> Result<Claims, TokenError> {
        let data = jsonwebtoken::decode::<Claims>(token, &self.decoding, &self.validation)
            .map_err(|e| match e.kind() {
                ErrorKind::InvalidSignature => TokenError::BadSignature,
                ErrorKind::InvalidIssuer => TokenError::Malformed("not a berth token".into()),
                ErrorKind::InvalidAlgorithm => {
                    TokenError::Malformed("not signed HS256 (the only algorithm accepted)".into())
                }
                ErrorKind::MissingRequiredClaim(c) => {
                    TokenError::Malformed(format!("no {c} claim"))
                }
                ErrorKind::Json(_) => TokenError::Malformed("unexpected claims".into()),
                _ => TokenError::Malformed("not a JWT (header.claims.signature)".into()),
            })?;
        let claims = data.claims;
        if claims.exp <= now {
            return Err(TokenError::Expired(now - claims.exp));
        }
        if claims.roles.is_empty() {
            return Err(TokenError::Malformed("no roles".into()));
        }
        Ok(claims)
    }

    /// Checks a token now.
    pub fn verify(&self, token: &str) -> Result<Claims, TokenError> {
        self.verify_at(token, now_secs())
    }
}

/// Parses a lifetime: a number and a unit, `s`, `m`, `h` or `d` (`90s`, `30m`, `8h`, `7d`).
pub fn parse_ttl(s: &str) -> Result<Duration, String> {
    let s = s.trim();
    let split = s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len());
    let (num, unit) = s.split_at(split);
    let n: u64 = num
        .parse()
        .map_err(|_| format!("ttl {s:?}: expected a number and a unit, e.g. 8h, 30m, 7d"))?;
    let per = match unit {
        "s" => 1,
        "m" => 60,
        "h" => 3600,
        "d" => 86400,
        _ => return Err(format!("ttl {s:?}: unit must be s, m, h or d")),
    };
    n.checked_mul(per)
        .map(Duration::from_secs)
        .ok_or_else(|| format!("ttl {s:?} is too long"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(roles: &[Role], project: &str) -> TokenSpec {
        TokenSpec {
            subject: "alice".into(),
            project: project.into(),
            roles: roles.to_vec(),
            ttl: Duration::from_secs(3600),
        }
    }

    #[test]
    fn issue_and_verify_round_trip() {
        let (key, _) = TokenKey::generate().unwrap();
        let t = key.issue_at(&spec(&[Role::Member], "p1"), 1000).unwrap();
        let c = key.verify_at(&t, 1001).unwrap();
        assert_eq!(
            (c.sub.as_str(), c.project.as_str(), c.roles.as_slice()),
            ("alice", "p1", &[Role::Member][..])
        );
        assert_eq!((c.iat, c.exp), (1000, 4600));
        let caller = c.into_caller();
        assert_eq!(caller.proof, Proof::Token);
        assert!(caller.has(Role::Member) && !caller.is_admin());
    }

    #[test]
    fn expired_forged_and_malformed_are_told_apart() {
        let (key, _) = TokenKey::generate().unwrap();
        let t = key.issue_at(&spec(&[Role::Reader], "p1"), 1000).unwrap();
        assert_eq!(key.verify_at(&t, 4600), Err(TokenError::Expired(0)));
        assert_eq!(key.verify_at(&t, 4700), Err(TokenError::Expired(100)));
        assert!(TokenError::Expired(5).to_string().contains("expired"));

        let (other, _) = TokenKey::generate().unwrap();
        assert_eq!(other.verify_at(&t, 1001), Err(TokenError::BadSignature));

        // Flip a claim without re-signing: the signature no longer matches.
        let parts: Vec<&str> = t.split('.').collect();
        let forged_claims = base64_url(
            br#"{"sub":"alice","project":"p1","roles":["admin"],"iat":1000,"exp":4600,"iss":"berth"}"#,
        );
        let forged = format!("{}.{}.{}", parts[0], forged_claims, parts[2]);
        assert_eq!(key.verify_at(&forged, 1001), Err(TokenError::BadSignature));

        // alg "none" is refused whatever the claims.
        let none = format!(
            "{}.{}.",
            base64_url(br#"{"alg":"none","typ":"JWT"}"#),
            forged_claims
        );
        assert!(matches!(
            key.verify_at(&none, 1001),
            Err(TokenError::Malformed(_))
        ));
        for junk in ["", "abc", "a.b.c", "Bearer x"] {
            assert!(
                matches!(key.verify_at(junk, 1001), Err(TokenError::Malformed(_))),
                "{junk:?}"
            );
        }
    }

    /// Unpadded base64url, enough for the tests' hand-made tokens.
    fn base64_url(bytes: &[u8]) -> String {
        const A: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";
        let mut out = String::new();
        for chunk in bytes.chunks(3) {
            let b = [
                chunk[0],
                *chunk.get(1).unwrap_or(&0),
                *chunk.get(2).unwrap_or(&0),
            ];
            let n = (u32::from(b[0]) << 16) | (u32::from(b[1]) << 8) | u32::from(b[2]);
            for i in 0..=chunk.len() {
                out.push(A[((n >> (18 - 6 * i)) & 63) as usize] as char);
            }
        }
        out
    }

    #[test]
    fn specs_are_validated_naming_the_field() {
        let (key, _) = TokenKey::generate().unwrap();
        let field = |s: TokenSpec| key.issue(&s).unwrap_err().field;
        assert_eq!(field(spec(&[], "p")), "roles");
        assert_eq!(field(spec(&[Role::Node, Role::Admin], "")), "roles");
        assert_eq!(field(spec(&[Role::Member], "")), "project");
        assert_eq!(field(spec(&[Role::Reader], "")), "project");
        let mut s = spec(&[Role::Admin], "");
        s.subject.clear();
        assert_eq!(field(s), "subject");
        let mut s = spec(&[Role::Admin], "");
        s.ttl = Duration::ZERO;
        assert_eq!(field(s), "ttl");
        let mut s = spec(&[Role::Admin], "");
        s.ttl = MAX_TTL + Duration::from_secs(1);
        assert_eq!(field(s), "ttl");
        assert_eq!(field(spec(&[Role::Member], "p\n")), "project");
        // Admin needs no project; duplicate roles collapse.
        let t = key
            .issue(&spec(&[Role::Admin, Role::Admin, Role::Member], ""))
            .unwrap();
        assert_eq!(
            key.verify(&t).unwrap().roles,
            vec![Role::Admin, Role::Member]
        );
    }

    #[test]
    fn ttls() {
        assert_eq!(parse_ttl("8h"), Ok(Duration::from_secs(8 * 3600)));
        assert_eq!(parse_ttl("90s"), Ok(Duration::from_secs(90)));
        assert_eq!(parse_ttl("30m"), Ok(Duration::from_secs(1800)));
        assert_eq!(parse_ttl("7d"), Ok(Duration::from_secs(7 * 86400)));
        for bad in ["", "8", "h", "8x", "-1h", "1.5h", "99999999999999999999d"] {
            assert!(parse_ttl(bad).is_err(), "{bad:?}");
        }
    }
}
