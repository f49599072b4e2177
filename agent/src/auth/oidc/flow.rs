//! The OpenID Connect side of a web login, all of it done by the `openidconnect` crate:
//! discovery (and the provider's signing keys), the authorization URL with PKCE, `state` and
//! `nonce`, the code exchange, and the ID token's signature and claims (issuer, audience,
//! expiry, nonce). This module only picks the user name and the groups out of the verified
//! claims.
use std::collections::BTreeMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use openidconnect::core::{
    CoreAuthDisplay, CoreAuthPrompt, CoreErrorResponseType, CoreGenderClaim, CoreJsonWebKey,
    CoreJweContentEncryptionAlgorithm, CoreJwsSigningAlgorithm, CoreProviderMetadata,
    CoreResponseType, CoreRevocableToken, CoreRevocationErrorResponse,
    CoreTokenIntrospectionResponse, CoreTokenType,
};
use openidconnect::{
    reqwest, AdditionalClaims, AuthenticationFlow, AuthorizationCode, Client, ClientId,
    ClientSecret, CsrfToken, EmptyExtraTokenFields, EndpointMaybeSet, EndpointNotSet, EndpointSet,
    IdTokenFields, IssuerUrl, Nonce, PkceCodeChallenge, PkceCodeVerifier, RedirectUrl, Scope,
    StandardErrorResponse, StandardTokenResponse, TokenResponse,
};
use serde::{Deserialize, Serialize};

use crate::config::OidcConfig;

/// Every claim of the ID token beyond the standard ones, by name: the user-name and groups
/// claims are configurable.
#[derive(Clone, Debug, Deserialize, Serialize)]
pub struct OtherClaims {
    #[serde(flatten)]
    all: serde_json::Map<String, serde_json::Value>,
}
impl AdditionalClaims for OtherClaims {}

type IdFields = IdTokenFields<
    OtherClaims,
    EmptyExtraTokenFields,
    CoreGenderClaim,
    CoreJweContentEncryptionAlgorithm,
    CoreJwsSigningAlgorithm,
>;
type Tokens = StandardTokenResponse<IdFields, CoreTokenType>;
type OidcClient = Client<
    OtherClaims,
    CoreAuthDisplay,
    CoreGenderClaim,
    CoreJweContentEncryptionAlgorithm,
    CoreJsonWebKey,
    CoreAuthPrompt,
    StandardErrorResponse<CoreErrorResponseType>,
    Tokens,
    CoreTokenIntrospectionResponse,
    CoreRevocableToken,
    CoreRevocationErrorResponse,
    EndpointSet,
    EndpointNotSet,
    EndpointNotSet,
    EndpointNotSet,
    EndpointMaybeSet,
    EndpointMaybeSet,
>;

/// Discovery is redone this often, so rotated signing keys are picked up.
const REDISCOVER: Duration = Duration::from_secs(3600);

/// A login started: the URL for the browser (carrying the caller's `state`) and what the
/// callback's exchange must match.
pub struct Started {
    pub url: String,
    pub nonce: Nonce,
    pub verifier: PkceCodeVerifier,
}

/// Who logged in, from the verified ID token.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Identity {
    pub username: String,
    /// Rule groups, after the mapping.
    pub groups: Vec<String>,
}

#[derive(Debug, thiserror::Error)]
pub enum FlowError {
    /// Discovery or the token endpoint could not be reached or answered nonsense.
    #[error("identity provider unavailable: {0}")]
    Unavailable(String),
    /// The code exchange was refused, or the ID token failed verification.
    #[error("{0}")]
    Token(String),
}

/// The provider, discovered once and again every [`REDISCOVER`].
pub struct Provider {
    cfg: OidcConfig,
    secret: Option<String>,
    http: reqwest::Client,
    client: Mutex<Option<(Instant, OidcClient)>>,
}

impl Provider {
    /// The HTTP client (the provider's CA, no redirects: a redirect could send the code or the
    /// secret elsewhere) and the secret; discovery happens at the first login.
    pub fn new(cfg: &OidcConfig) -> anyhow::Result<Provider> {
        use anyhow::Context as _;
        let secret = match &cfg.client_secret_file {
            Some(f) => Some(
                std::fs::read_to_string(f)
                    .with_context(|| format!("reading oidc.client_secret_file {}", f.display()))?
                    .lines()
                    .next()
                    .unwrap_or("")
                    .trim()
                    .to_owned(),
            ),
            None => None,
        };
        let mut b = reqwest::ClientBuilder::new()
            .redirect(reqwest::redirect::Policy::none())
            .timeout(Duration::from_secs(10));
        if let Some(ca) = &cfg.ca_file {
            let pem = std::fs::read(ca)
                .with_context(|| format!("reading oidc.ca_file {}", ca.display()))?;
            for c in reqwest::Certificate::from_pem_bundle(&pem)
                .with_context(|| format!("oidc.ca_file {}: not a PEM bundle", ca.display()))?
            {
                b = b.add_root_certificate(c);
            }
        }
        Ok(Provider {
            cfg: cfg.clone(),
            secret,
            http: b.build().context("building the OIDC HTTP client")?,
            client: Mutex::new(None),
        })
    }

    async fn client(&self) -> Result<OidcClient, FlowError> {
        if let Some((at, c)) = &*self.client.lock().unwrap_or_else(|e| e.into_inner()) {
            if at.elapsed() < REDISCOVER {
                return Ok(c.clone());
            }
        }
        let issuer = IssuerUrl::new(self.cfg.issuer.clone())
            .map_err(|e| FlowError::Unavailable(format!("issuer URL: {e}")))?;
        let meta = CoreProviderMetadata::discover_async(issuer, &self.http)
            .await
            .map_err(|e| FlowError::Unavailable(format!("discovery: {}", chain(&e))))?;
        let redirect = RedirectUrl::new(self.cfg.redirect_url.clone())
            .map_err(|e| FlowError::Unavailable(format!("redirect URL: {e}")))?;
        let c = OidcClient::from_provider_metadata(
            meta,
            ClientId::new(self.cfg.client_id.clone()),
            self.secret.clone().map(ClientSecret::new),
        )
        .set_redirect_uri(redirect);
        *self.client.lock().unwrap_or_else(|e| e.into_inner()) = Some((Instant::now(), c.clone()));
        Ok(c)
    }

    /// A new authorization request (code flow, PKCE S256, fresh `state` and `nonce`).
    pub async fn start(&self, state: String) -> Result<Started, FlowError> {
        let client = self.client().await?;
        let (challenge, verifier) = PkceCodeChallenge::new_random_sha256();
        let mut req = client
            .authorize_url(
                AuthenticationFlow::<CoreResponseType>::AuthorizationCode,
                move || CsrfToken::new(state),
                Nonce::new_random,
            )
            .set_pkce_challenge(challenge);
        for s in &self.cfg.scopes {
            req = req.add_scope(Scope::new(s.clone()));
        }
        let (url, _state, nonce) = req.url();
        Ok(Started {
            url: url.to_string(),
            nonce,
            verifier,
        })
    }

    /// The callback's code, exchanged with the login's PKCE verifier; the ID token verified
    /// against the login's nonce.
    pub async fn finish(
        &self,
        code: String,
        verifier: PkceCodeVerifier,
        nonce: &Nonce,
    ) -> Result<Identity, FlowError> {
        let client = self.client().await?;
        let tokens = client
            .exchange_code(AuthorizationCode::new(code))
            .map_err(|e| FlowError::Unavailable(format!("no token endpoint: {e}")))?
            .set_pkce_verifier(verifier)
            .request_async(&self.http)
            .await
            .map_err(|e| match &e {
                openidconnect::RequestTokenError::ServerResponse(r) => {
                    FlowError::Token(format!("code refused by the provider: {r}"))
                }
                _ => FlowError::Unavailable(format!("token endpoint: {}", chain(&e))),
            })?;
        let id_token = tokens
            .id_token()
            .ok_or_else(|| FlowError::Token("no ID token in the provider's answer".into()))?;
        let skew = chrono::Duration::seconds(self.cfg.allowed_clock_skew_secs as i64);
        let verifier = client
            .id_token_verifier()
            .set_time_fn(move || chrono::Utc::now() - skew)
            .set_issue_time_verifier_fn(move |iat| {
                if iat > chrono::Utc::now() + skew {
                    Err(format!("issued in the future ({iat})"))
                } else {
                    Ok(())
                }
            });
        let claims = id_token
            .claims(&verifier, nonce)
            .map_err(|e| FlowError::Token(format!("ID token refused: {e}")))?;
        let other = &claims.additional_claims().all;
        let username = match self.cfg.username_claim.as_str() {
            "sub" => claims.subject().to_string(),
            "email" => claims
                .email()
                .map(|e| e.to_string())
                .unwrap_or_else(|| claims.subject().to_string()),
            "preferred_username" => claims
                .preferred_username()
                .map(|u| u.to_string())
                .unwrap_or_else(|| claims.subject().to_string()),
            name => other
                .get(name)
                .and_then(|v| v.as_str())
                .map(str::to_owned)
                .unwrap_or_else(|| claims.subject().to_string()),
        };
        let values = claim_strings(other.get(&self.cfg.groups_claim));
        Ok(Identity {
            username,
            groups: map_groups(&values, &self.cfg.group_mapping),
        })
    }
}

/// A claim's string values: a list of strings or one string; anything else is none.
pub fn claim_strings(v: Option<&serde_json::Value>) -> Vec<String> {
    match v {
        Some(serde_json::Value::String(s)) => vec![s.clone()],
        Some(serde_json::Value::Array(a)) => a
            .iter()
            .filter_map(|x| x.as_str().map(str::to_owned))
            .collect(),
        _ => Vec::new(),
    }
}

/// Claim values to rule groups: through the mapping when there is one (unmapped values grant
/// nothing), as they are otherwise. Sorted, without duplicates.
pub fn map_groups(values: &[String], mapping: &BTreeMap<String, String>) -> Vec<String> {
    let mut out: Vec<String> = if mapping.is_empty() {
        values.to_vec()
    } else {
        values
            .iter()
            .filter_map(|v| mapping.get(v).cloned())
            .collect()
    };
    out.sort();
    out.dedup();
    out
}

fn chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut cur = e.source();
    while let Some(c) = cur {
        s.push_str(": ");
        s.push_str(&c.to_string());
        cur = c.source();
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn claim_values_are_a_list_or_one_string() {
        let v = serde_json::json!(["a", 1, "b"]);
        assert_eq!(claim_strings(Some(&v)), ["a", "b"]);
        let v = serde_json::json!("solo");
        assert_eq!(claim_strings(Some(&v)), ["solo"]);
        assert!(claim_strings(Some(&serde_json::json!({"x": 1}))).is_empty());
        assert!(claim_strings(None).is_empty());
    }

    #[test]
    fn groups_go_through_the_mapping_when_there_is_one() {
        let values: Vec<String> = ["idp-eng", "idp-other", "idp-eng"]
            .iter()
            .map(|s| s.to_string())
            .collect();
        assert_eq!(
            map_groups(&values, &BTreeMap::new()),
            ["idp-eng", "idp-other"]
        );
        let m: BTreeMap<String, String> = [("idp-eng".to_string(), "eng".to_string())].into();
        assert_eq!(map_groups(&values, &m), ["eng"]);
    }
}
