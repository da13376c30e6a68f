//! Who is calling: static tokens with a role (`Authorization: token X` as the
//! seed API shows, or `Bearer X`) and HS256 JWTs (claims `sub`, `role`, `exp`).
//! Tokens are compared in constant time and never logged; what each role may
//! do is decided per route in `http::access`.

use std::fmt;

use jsonwebtoken::{Algorithm, DecodingKey, Validation};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

/// A caller's role.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    /// Sees and acts on their own orders only; `subject` is their customer id.
    Customer,
    Staff,
    Admin,
    /// Another system (a process engine, a shop back end).
    Service,
    /// A delivery partner; `subject` is their partner id (the orderbot id
    /// of the orders assigned to them).
    Delivery,
}

/// The API groups auth is decided for (`auth.open` names those that need
/// no token even when auth is on).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ApiGroup {
    /// The seed's `PUT|POST /update_order` (what CPEE calls).
    SeedWrites,
    /// The board's reads: the seed's `/get_*`, `/views`, `/events`.
    Views,
    /// CPEE's endpoints: intake, `next-order`, `wait`, `/cpee/callbacks`.
    Cpee,
    /// Products, customers, orders with items, processing, templates.
    Shop,
    /// The Order Status API (`/api/store/orders/*`).
    Lifecycle,
    /// Delivery, cancellation, returns, feedback, bulk, export, analytics.
    Fulfilment,
    /// `/metrics` and `/openapi.json` (`/healthz`, `/readyz` are always open).
    Ops,
}

impl ApiGroup {
    pub const ALL: [ApiGroup; 7] = [
        ApiGroup::SeedWrites,
        ApiGroup::Views,
        ApiGroup::Cpee,
        ApiGroup::Shop,
        ApiGroup::Lifecycle,
        ApiGroup::Fulfilment,
        ApiGroup::Ops,
    ];

    pub fn name(self) -> &'static str {
        [
            "seed_writes",
            "views",
            "cpee",
            "shop",
            "lifecycle",
            "fulfilment",
            "ops",
        ][self as usize]
    }

    /// Groups a process engine writes through: an open one can be limited
    /// to `auth.cpee_networks`.
    pub fn is_engine(self) -> bool {
        matches!(self, ApiGroup::SeedWrites | ApiGroup::Cpee)
    }
}

/// Text that must never be printed (tokens, secrets).
#[derive(Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(transparent)]
pub struct Secret(pub String);

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(if self.0.is_empty() {
            "\"\""
        } else {
            "<redacted>"
        })
    }
}

/// A static token from the config.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StaticToken {
    pub token: Secret,
    pub role: Role,
    /// Who it stands for; for a customer, their customer id.
    #[serde(default)]
    pub subject: Option<String>,
}

/// An authenticated caller.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Caller {
    pub role: Role,
    pub subject: Option<String>,
}

impl Caller {
    /// Staff, admin and service may do everything.
    pub fn is_privileged(&self) -> bool {
        matches!(self.role, Role::Staff | Role::Admin | Role::Service)
    }

    /// The partner id of a delivery partner.
    pub fn partner_id(&self) -> Option<&str> {
        match self.role {
            Role::Delivery => self.subject.as_deref(),
            _ => None,
        }
    }

    /// The customer id of a customer caller.
    pub fn customer_id(&self) -> Option<u64> {
        match self.role {
            Role::Customer => self.subject.as_deref().and_then(customer_subject),
            _ => None,
        }
    }
}

/// A customer's subject read strictly: the decimal digits of their id and
/// nothing else (no sign, no spaces, no leading zeros), so `"+2"` or
/// `" 2"` never acts as customer 2.
pub fn customer_subject(subject: &str) -> Option<u64> {
    let canonical = !subject.is_empty()
        && subject.bytes().all(|b| b.is_ascii_digit())
        && (subject == "0" || !subject.starts_with('0'));
    canonical.then(|| subject.parse().ok()).flatten()
}

/// Why a role's subject is unusable, if it is: a customer's must be their
/// customer id, a delivery partner's their partner id. The config's static
/// tokens and every JWT are held to this one rule.
pub fn subject_problem(role: Role, subject: Option<&str>) -> Option<&'static str> {
    match role {
        Role::Customer if subject.and_then(customer_subject).is_none() => {
            Some("its subject must be a customer id (decimal digits)")
        }
        Role::Delivery if subject.is_none_or(|s| s.trim().is_empty()) => {
            Some("its subject must be the partner id")
        }
        _ => None,
    }
}

/// The token was missing, malformed, unknown, expired or badly signed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct InvalidToken;

#[derive(Deserialize)]
struct Claims {
    sub: Option<String>,
    /// A role's name, or a value `auth.jwt_roles` maps to one.
    role: String,
}

pub struct Auth {
    /// SHA-256 of each static token, so every comparison takes the same time
    /// whatever the lengths.
    tokens: Vec<([u8; 32], Caller)>,
    jwt: Option<(DecodingKey, Validation)>,
    /// `auth.jwt_roles`: claim values besides the roles' own names.
    jwt_roles: std::collections::BTreeMap<String, Role>,
}

impl Auth {
    pub fn new(tokens: &[StaticToken], jwt_secret: &Secret) -> Auth {
        let jwt = (!jwt_secret.0.is_empty()).then(|| {
            let mut validation = Validation::new(Algorithm::HS256);
            validation.set_required_spec_claims(&["exp"]);
            validation.leeway = 0;
            // A token that is not valid yet is refused like an expired one.
            validation.validate_nbf = true;
            (
                DecodingKey::from_secret(jwt_secret.0.as_bytes()),
                validation,
            )
        });
        Auth {
            tokens: tokens
                .iter()
                .map(|t| {
                    let caller = Caller {
                        role: t.role,
                        subject: t.subject.clone(),
                    };
                    (digest(&t.token.0), caller)
                })
                .collect(),
            jwt,
            jwt_roles: Default::default(),
        }
    }

    /// Reads JWT `role` claims through `roles` (`auth.jwt_roles`) first.
    pub fn with_roles(mut self, roles: &std::collections::BTreeMap<String, Role>) -> Auth {
        self.jwt_roles = roles.clone();
        self
    }

    /// The role a JWT's `role` claim names: mapped, or by its own name.
    fn role_of(&self, claim: &str) -> Option<Role> {
        if let Some(role) = self.jwt_roles.get(claim) {
            return Some(*role);
        }
        serde_json::from_value(serde_json::Value::String(claim.to_string())).ok()
    }

    /// With no tokens and no JWT secret the broker is open.
    pub fn enabled(&self) -> bool {
        !self.tokens.is_empty() || self.jwt.is_some()
    }

    /// The caller an `Authorization` header value names.
    pub fn identify(&self, header: &str) -> Result<Caller, InvalidToken> {
        let (scheme, token) = header.trim().split_once(' ').ok_or(InvalidToken)?;
        if !scheme.eq_ignore_ascii_case("token") && !scheme.eq_ignore_ascii_case("bearer") {
            return Err(InvalidToken);
        }
        let token = token.trim();
        let offered = digest(token);
        // Look at every token, so the time taken does not say which matched.
        let mut found = None;
        for (known, caller) in &self.tokens {
            if constant_time_eq(known, &offered) {
                found = Some(caller.clone());
            }
        }
        if let Some(caller) = found {
            return Ok(caller);
        }
        let (key, validation) = self.jwt.as_ref().ok_or(InvalidToken)?;
        let data =
            jsonwebtoken::decode::<Claims>(token, key, validation).map_err(|_| InvalidToken)?;
        let role = self.role_of(&data.claims.role).ok_or(InvalidToken)?;
        if subject_problem(role, data.claims.sub.as_deref()).is_some() {
            return Err(InvalidToken);
        }
        Ok(Caller {
            role,
            subject: data.claims.sub,
        })
    }
}

fn digest(token: &str) -> [u8; 32] {
    Sha256::digest(token.as_bytes()).into()
}

fn constant_time_eq(a: &[u8; 32], b: &[u8; 32]) -> bool {
    a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

#[cfg(test)]
mod tests {
    use super::*;

    fn auth() -> Auth {
        let tokens = [
            StaticToken {
                token: Secret("s3cret".into()),
                role: Role::Staff,
                subject: Some("sam".into()),
            },
            StaticToken {
                token: Secret("cust-7".into()),
                role: Role::Customer,
                subject: Some("7".into()),
            },
        ];
        Auth::new(&tokens, &Secret("jwt-key".into()))
    }

    fn jwt(secret: &str, claims: serde_json::Value) -> String {
        let key = jsonwebtoken::EncodingKey::from_secret(secret.as_bytes());
        jsonwebtoken::encode(&jsonwebtoken::Header::new(Algorithm::HS256), &claims, &key).unwrap()
    }

    fn exp(offset: i64) -> i64 {
        crate::model::Millis::now().0 as i64 / 1000 + offset
    }

    #[test]
    fn static_tokens_by_either_scheme() {
        let auth = auth();
        assert_eq!(auth.identify("token s3cret").unwrap().role, Role::Staff);
        assert_eq!(
            auth.identify("Bearer s3cret").unwrap().subject.as_deref(),
            Some("sam")
        );
        assert_eq!(
            auth.identify("token cust-7").unwrap().customer_id(),
            Some(7)
        );
        for bad in [
            "token wrong",
            "s3cret",
            "Basic s3cret",
            "token ",
            "",
            "token s3cret2",
        ] {
            assert_eq!(auth.identify(bad), Err(InvalidToken), "{bad:?}");
        }
    }

    #[test]
    fn jwts_need_the_secret_a_role_and_a_future_exp() {
        let auth = auth();
        let good = jwt(
            "jwt-key",
            serde_json::json!({"sub": "12", "role": "customer", "exp": exp(60)}),
        );
        let caller = auth.identify(&format!("Bearer {good}")).unwrap();
        assert_eq!(
            (caller.role, caller.customer_id()),
            (Role::Customer, Some(12))
        );
        for bad in [
            jwt(
                "other-key",
                serde_json::json!({"sub": "1", "role": "admin", "exp": exp(60)}),
            ),
            jwt(
                "jwt-key",
                serde_json::json!({"sub": "1", "role": "admin", "exp": exp(-10)}),
            ),
            jwt("jwt-key", serde_json::json!({"sub": "1", "role": "admin"})),
            // Not valid yet.
            jwt(
                "jwt-key",
                serde_json::json!({"sub": "1", "role": "admin", "exp": exp(600), "nbf": exp(300)}),
            ),
            // A customer without a usable customer subject.
            jwt(
                "jwt-key",
                serde_json::json!({"role": "customer", "exp": exp(60)}),
            ),
            jwt(
                "jwt-key",
                serde_json::json!({"sub": "+2", "role": "customer", "exp": exp(60)}),
            ),
            jwt(
                "jwt-key",
                serde_json::json!({"sub": "ann", "role": "customer", "exp": exp(60)}),
            ),
            jwt(
                "jwt-key",
                serde_json::json!({"role": "delivery", "exp": exp(60)}),
            ),
            jwt(
                "jwt-key",
                serde_json::json!({"sub": "1", "role": "root", "exp": exp(60)}),
            ),
            "not.a.jwt".to_string(),
        ] {
            assert_eq!(
                auth.identify(&format!("Bearer {bad}")),
                Err(InvalidToken),
                "{bad}"
            );
        }
        let open = Auth::new(&[], &Secret::default());
        assert!(!open.enabled());
        assert_eq!(open.identify(&format!("Bearer {good}")), Err(InvalidToken));
    }

    #[test]
    fn customer_subjects_are_read_strictly() {
        assert_eq!(customer_subject("2"), Some(2));
        assert_eq!(customer_subject("0"), Some(0));
        assert_eq!(customer_subject("18446744073709551615"), Some(u64::MAX));
        for bad in [
            "+2",
            " 2",
            "2 ",
            "02",
            "-2",
            "2x",
            "",
            "18446744073709551616",
            "٢",
        ] {
            assert_eq!(customer_subject(bad), None, "{bad:?}");
        }
        let ok = jwt(
            "jwt-key",
            serde_json::json!({"sub": "1", "role": "admin", "exp": exp(600), "nbf": exp(-5)}),
        );
        assert!(auth().identify(&format!("Bearer {ok}")).is_ok());
    }

    #[test]
    fn secrets_do_not_print() {
        let token = StaticToken {
            token: Secret("s3cret".into()),
            role: Role::Admin,
            subject: None,
        };
        assert!(!format!("{token:?}").contains("s3cret"));
    }
}
