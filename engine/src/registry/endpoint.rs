//! One oci-client `Client` per registry host, with that host's protocol and
//! credentials.
//!
//! oci-client picks HTTP or HTTPS from one list of exact host strings fixed
//! when the client is built (`HttpsExcept`), and loopback registries may sit on
//! any port. So bake builds a client per host on first use: plain HTTP for
//! loopback and `insecure` hosts, HTTPS otherwise. A client also caches the
//! registry's tokens, per repository and operation, and fetches a new one
//! when a token expires.

use std::collections::{HashMap, HashSet};
use std::path::PathBuf;
use std::sync::{Arc, Mutex};

use docker_credential::{CredentialRetrievalError, DockerCredential};
use oci_client::client::{ClientConfig, ClientProtocol};
use oci_client::secrets::RegistryAuth;
use oci_client::{Client, Reference, RegistryOperation};

use super::deadline::answered;
use super::error::{Ctx, RegistryError, classify};
use super::retry::RetryPolicy;
use crate::config::{Config, Timeouts, normalize_registry};
use crate::reference::{DEFAULT_REGISTRY, ImageRef};

/// bake's user agent.
const USER_AGENT: &str = concat!("bake/", env!("CARGO_PKG_VERSION"));

/// Where registry credentials come from.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub enum Credentials {
    /// Docker's: `$DOCKER_CONFIG/config.json`, else `~/.docker/config.json`
    /// (`auths`, `credsStore`, `credHelpers`).
    #[default]
    DockerConfig,
    /// A Docker `config.json` at this path.
    File(PathBuf),
    /// None: every registry anonymously.
    Anonymous,
}

/// A registry host, ready to talk to.
#[derive(Clone)]
pub(crate) struct Endpoint {
    /// The host as bake names it (`docker.io`, `localhost:5000`).
    pub host: String,
    pub client: Client,
    pub auth: RegistryAuth,
    /// Why credentials found for this host could not be used, for "not logged in" help.
    pub credential_note: Option<String>,
    /// How long the registry may keep bake waiting.
    pub timeouts: Timeouts,
    /// Repositories (and whether for push) a token was already fetched for.
    authorized: Arc<tokio::sync::Mutex<HashSet<(String, bool)>>>,
}

impl Endpoint {
    /// Context for naming `what` in errors.
    pub(crate) fn ctx<'a>(&'a self, what: &'a str, push: bool) -> Ctx<'a> {
        Ctx {
            registry: &self.host,
            reference: what,
            push,
            anonymous: self.auth == RegistryAuth::Anonymous,
            credential_note: self.credential_note.as_deref(),
            connect_timeout: self.timeouts.connect,
        }
    }

    /// An oci-client reference to `repository` on this host: by digest when
    /// one is given, else by tag (`latest` when none).
    pub(crate) fn reference(&self, repository: &str, tag: Option<&str>, digest: Option<&str>) -> Reference {
        match digest {
            Some(digest) => Reference::with_digest(self.host.clone(), repository.to_owned(), digest.to_owned()),
            None => Reference::with_tag(self.host.clone(), repository.to_owned(), tag.unwrap_or("latest").to_owned()),
        }
    }

    /// Fetches a token for a repository, once per repository and operation,
    /// so that a missing login or an unreachable registry shows up as such
    /// before the first real request. (oci-client fetches tokens by itself
    /// too, but swallows the errors, which then surface as bare 401s.)
    pub(crate) async fn authorize(
        &self,
        reference: &Reference,
        push: bool,
        retry: &RetryPolicy,
    ) -> Result<(), RegistryError> {
        let key = (reference.repository().to_owned(), push);
        let mut done = self.authorized.lock().await;
        if done.contains(&key) {
            return Ok(());
        }
        let op = if push { RegistryOperation::Push } else { RegistryOperation::Pull };
        let what = format!("{}/{}", self.host, reference.repository());
        retry
            .run(|| async {
                let ctx = self.ctx(&what, push);
                answered(&self.timeouts, ctx, async {
                    self.client.auth(reference, &self.auth, op).await.map_err(|e| classify(e, ctx))
                })
                .await
            })
            .await?;
        done.insert(key);
        Ok(())
    }
}

/// The endpoints of one [`super::Registry`], built on first use.
pub(crate) struct Endpoints {
    config: Config,
    credentials: Credentials,
    hosts: Mutex<HashMap<String, Endpoint>>,
}

impl Endpoints {
    pub(crate) fn new(config: Config, credentials: Credentials) -> Self {
        Self { config, credentials, hosts: Mutex::new(HashMap::new()) }
    }

    pub(crate) fn config(&self) -> &Config {
        &self.config
    }

    /// Where to look for `r`'s repository: its registry's mirrors in order,
    /// then the registry itself.
    pub(crate) fn sources(&self, r: &ImageRef) -> Vec<String> {
        let registry = normalize_registry(&r.registry);
        let mut sources: Vec<String> = self.config.mirrors(registry).to_vec();
        sources.retain(|m| m != registry);
        sources.push(registry.to_owned());
        sources
    }

    /// The endpoint for a host, built on first use.
    pub(crate) async fn get(&self, host: &str) -> Result<Endpoint, RegistryError> {
        let host = normalize_registry(host);
        if let Some(endpoint) = self.lock().get(host) {
            return Ok(endpoint.clone());
        }
        let credentials = self.credentials.clone();
        let lookup_host = host.to_owned();
        // Credential helpers are processes: keep them off the async threads.
        let (auth, credential_note) = tokio::task::spawn_blocking(move || credentials_for(&credentials, &lookup_host))
            .await
            .map_err(|e| RegistryError::Internal(e.to_string()))?;
        let timeouts = self.config.timeouts;
        let protocol = if self.config.plain_http(host) { ClientProtocol::Http } else { ClientProtocol::Https };
        let client_config = ClientConfig {
            protocol,
            // One streamed PUT per blob: no 4 MiB chunks held in memory.
            use_monolithic_push: true,
            // bake picks the platform itself, from the raw index.
            platform_resolver: None,
            connect_timeout: Some(timeouts.connect),
            // A backstop only: bake's own deadlines (see `deadline.rs`) are
            // shorter and say what stalled.
            read_timeout: Some(2 * timeouts.first_byte.max(timeouts.idle)),
            user_agent: USER_AGENT,
            ..ClientConfig::default()
        };
        let client = Client::try_from(client_config)
            .map_err(|e| RegistryError::Client { registry: host.to_owned(), source: Box::new(e) })?;
        let endpoint =
            Endpoint { host: host.to_owned(), client, auth, credential_note, timeouts, authorized: Arc::default() };
        Ok(self.lock().entry(host.to_owned()).or_insert(endpoint).clone())
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, Endpoint>> {
        // Every update is a single insert, so a panicking holder cannot leave
        // the map half-written: recover it.
        self.hosts.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

/// The credentials Docker would use for `host`, and a note when some were
/// found but cannot be used.
fn credentials_for(source: &Credentials, host: &str) -> (RegistryAuth, Option<String>) {
    let lookup = |server: &str| match source {
        Credentials::Anonymous => Err(CredentialRetrievalError::NoCredentialConfigured),
        Credentials::DockerConfig => docker_credential::get_credential(server),
        Credentials::File(path) => std::fs::File::open(path)
            .map_err(|_| CredentialRetrievalError::ConfigReadError)
            .and_then(|f| docker_credential::get_credential_from_reader(std::io::BufReader::new(f), server)),
    };
    // `docker login` files Docker Hub under its v1 URL; some tools write `docker.io`.
    let servers: &[&str] =
        if host == DEFAULT_REGISTRY { &["https://index.docker.io/v1/", DEFAULT_REGISTRY] } else { &[host] };
    let mut note = None;
    for server in servers {
        match lookup(server) {
            Ok(DockerCredential::UsernamePassword(user, password)) => {
                return (RegistryAuth::Basic(user, password), None);
            }
            Ok(DockerCredential::IdentityToken(_)) => {
                note = Some(format!(
                    "the Docker config holds an identity token for {host}, which bake cannot use yet; log in with \
                     a username and password (or an access token as the password)"
                ));
            }
            Err(CredentialRetrievalError::HelperFailure { helper, stderr, .. }) => {
                let stderr = stderr.trim();
                if !stderr.contains("not found") {
                    note = Some(format!("the credential helper `{helper}` failed: {stderr}"));
                }
            }
            Err(CredentialRetrievalError::HelperCommunicationError) => {
                note = Some("the Docker config names a credential helper that could not be run".to_owned());
            }
            Err(
                CredentialRetrievalError::CredentialDecodingError | CredentialRetrievalError::MalformedHelperResponse,
            ) => {
                note = Some(format!("the credentials for {host} in the Docker config cannot be decoded"));
            }
            Err(_) => {}
        }
    }
    (RegistryAuth::Anonymous, note)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn credentials_from_a_docker_config() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("config.json");
        // "user:secret" and "hub:pw", base64.
        std::fs::write(
            &path,
            r#"{"auths":{"127.0.0.1:5000":{"auth":"dXNlcjpzZWNyZXQ="},
                "https://index.docker.io/v1/":{"auth":"aHViOnB3"},
                "tok.example.com":{"identitytoken":"xyz"}}}"#,
        )
        .expect("write");
        let source = Credentials::File(path);
        assert_eq!(credentials_for(&source, "127.0.0.1:5000").0, RegistryAuth::Basic("user".into(), "secret".into()));
        assert_eq!(credentials_for(&source, "docker.io").0, RegistryAuth::Basic("hub".into(), "pw".into()));
        assert_eq!(credentials_for(&source, "other.example.com"), (RegistryAuth::Anonymous, None));
        let (auth, note) = credentials_for(&source, "tok.example.com");
        assert_eq!(auth, RegistryAuth::Anonymous);
        assert!(note.is_some_and(|n| n.contains("identity token")));
        let missing = Credentials::File(dir.path().join("none.json"));
        assert_eq!(credentials_for(&missing, "127.0.0.1:5000"), (RegistryAuth::Anonymous, None));
    }

    #[test]
    fn sources_put_mirrors_first() {
        let config =
            Config::from_str("c", r#"registry "docker.io" { mirror "127.0.0.1:5000" "docker.io"; }"#).expect("valid");
        let endpoints = Endpoints::new(config, Credentials::Anonymous);
        let r = ImageRef::parse("busybox:1").expect("ref");
        assert_eq!(endpoints.sources(&r), ["127.0.0.1:5000", "docker.io"]);
        let r = ImageRef::parse("localhost:5000/x").expect("ref");
        assert_eq!(endpoints.sources(&r), ["localhost:5000"]);
    }
}
