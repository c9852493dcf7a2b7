//! What can go wrong talking to a registry, and how oci-client's errors map
//! onto it.

use std::time::Duration;

use miette::Diagnostic;
use oci_client::errors::{DigestError, OciDistributionError, OciEnvelope, OciErrorCode};

use crate::store::StoreError;

/// Errors from pulling or pushing images.
#[derive(Debug, thiserror::Error, Diagnostic)]
pub enum RegistryError {
    #[error("registry {registry} is unreachable: {reason}")]
    #[diagnostic(code(bake::registry::unreachable), help("{}", unreachable_help(registry)))]
    Unreachable {
        registry: String,
        /// What failed, in a few words ("Connection refused (os error 111)").
        reason: String,
        /// oci-client's error, whose chain `reason` sums up.
        cause: Option<Box<OciDistributionError>>,
    },

    #[error("registry {registry} stalled: {stalled} (waited {after})")]
    #[diagnostic(
        code(bake::registry::timeout),
        help(
            "the registry (or the network on the way) stopped answering; check it, or give it longer with \
             `network {}=\"2m\"` in bake's config file or {}=2m",
            limit.setting(),
            limit.variable()
        )
    )]
    Timeout {
        registry: String,
        /// What bake was waiting for ("no answer about x", "no data for blob y").
        stalled: String,
        /// How long it waited, as "30s".
        after: String,
        limit: super::deadline::Limit,
    },

    #[error("registry {registry} failed: HTTP {status} {message}")]
    #[diagnostic(code(bake::registry::server), help("the registry had a problem; try again later"))]
    Server { registry: String, status: u16, message: String },

    #[error("registry {registry} refused access to {reference}: not logged in")]
    #[diagnostic(code(bake::registry::unauthorized), help("{help}"))]
    Unauthorized { registry: String, reference: String, help: String },

    #[error("registry {registry} denied access to {reference}")]
    #[diagnostic(
        code(bake::registry::denied),
        help("the account you logged in with may not {action} this repository; check its name and your permissions")
    )]
    Denied { registry: String, reference: String, action: &'static str },

    #[error("{reference} was not found")]
    #[diagnostic(code(bake::registry::not_found), help("check the repository name and the tag or digest"))]
    NotFound { reference: String },

    #[error("registry {registry} rejected {what}: {message}")]
    #[diagnostic(code(bake::registry::rejected))]
    Rejected { registry: String, what: String, message: String },

    #[error("{reference} has no {platform} image")]
    #[diagnostic(
        code(bake::registry::no_platform),
        help("it has images for: {available}; build for one of them (`--platform`, `platforms`) or pick another base")
    )]
    NoPlatform { reference: String, platform: String, available: String },

    #[error("{reference} is a {actual} image, not {wanted}")]
    #[diagnostic(
        code(bake::registry::wrong_platform),
        help(
            "this reference names one image, not an index of platforms; use a reference that has {wanted} (or an index), or build for {actual}"
        )
    )]
    WrongPlatform { reference: String, wanted: String, actual: String },

    #[error("{reference} is an index nested deeper than {max} levels")]
    #[diagnostic(
        code(bake::registry::index_too_deep),
        help(
            "an image index points at platform manifests (or at most a few indexes deep); this one is malformed or hostile"
        )
    )]
    IndexTooDeep { reference: String, max: usize },

    #[error("{what} from {registry} is {size} bytes, more than bake reads ({max} bytes)")]
    #[diagnostic(
        code(bake::registry::too_large),
        help("manifests, indexes and image configs are small JSON documents; this registry served something else")
    )]
    TooLarge { registry: String, what: String, size: u64, max: u64 },

    #[error("{what} from {registry} does not match its digest: expected {expected}, got {actual}")]
    #[diagnostic(
        code(bake::registry::digest_mismatch),
        help("the registry (or a mirror, or a proxy on the way) served other content than was asked for")
    )]
    DigestMismatch { registry: String, what: String, expected: String, actual: String },

    #[error("{reference} is a {media_type}, which bake cannot use as an image")]
    #[diagnostic(code(bake::registry::unsupported), help("{help}"))]
    Unsupported { reference: String, media_type: String, help: String },

    #[error("{reference}: invalid {what}: {reason}")]
    #[diagnostic(code(bake::registry::invalid_document))]
    Invalid { reference: String, what: &'static str, reason: String },

    #[error("registry {registry} sent a request on to {target}, {why}")]
    #[diagnostic(
        code(bake::registry::redirect),
        help(
            "a registry may send blob downloads to a CDN, but never to a link-local address (where cloud \
             metadata services answer) or to this machine's loopback; check the registry or mirror you use"
        )
    )]
    Redirected {
        registry: String,
        /// The host the redirect pointed at.
        target: String,
        /// "a link-local address", "this machine's loopback", ...
        why: &'static str,
    },

    #[error("registry {registry} broke the distribution protocol: {message}")]
    #[diagnostic(code(bake::registry::protocol))]
    Protocol { registry: String, message: String },

    #[error("blob {digest} of image {image} is neither in the local store nor in {reference}")]
    #[diagnostic(
        code(bake::registry::missing_blob),
        help("the local store lost part of the image; build it again (or pull its base image again)")
    )]
    MissingBlob { digest: String, image: String, reference: String },

    #[error("image {digest} to push is not in the local store")]
    #[diagnostic(code(bake::registry::missing_image), help("build it first"))]
    MissingImage { digest: String },

    #[error("cannot push {media_type} {digest}: bake pushes image manifests")]
    #[diagnostic(code(bake::registry::push_unsupported))]
    PushUnsupported { digest: String, media_type: String },

    #[error("could not get {reference} from any source")]
    #[diagnostic(
        code(bake::registry::sources),
        help("bake tried the mirrors configured for {registry}, then {registry} itself")
    )]
    AllSources {
        reference: String,
        registry: String,
        #[related]
        errors: Vec<RegistryError>,
    },

    #[error("cannot set up the HTTP client for {registry}")]
    #[diagnostic(code(bake::registry::client))]
    Client {
        registry: String,
        #[source]
        source: Box<OciDistributionError>,
    },

    #[error(transparent)]
    #[diagnostic(transparent)]
    Store(#[from] StoreError),

    #[error("cannot write a blob to the local store")]
    #[diagnostic(code(bake::registry::store_write), help("check the free space and permissions of the store folder"))]
    StoreWrite {
        #[source]
        source: std::io::Error,
    },

    #[error("a registry transfer task failed: {0}")]
    #[diagnostic(code(bake::registry::internal))]
    Internal(String),
}

impl RegistryError {
    /// Whether trying again may help: the registry could not be reached, or
    /// answered 5xx / 429.
    pub fn is_transient(&self) -> bool {
        matches!(self, Self::Unreachable { .. } | Self::Server { .. } | Self::Timeout { .. })
    }

    /// Whether the registry (and every mirror tried) could not be reached at
    /// all. The executor treats this as a warning for caches.
    pub fn is_unreachable(&self) -> bool {
        match self {
            Self::Unreachable { .. } | Self::Timeout { .. } => true,
            Self::AllSources { errors, .. } => !errors.is_empty() && errors.iter().all(Self::is_unreachable),
            _ => false,
        }
    }

    /// Whether the image (or a blob) does not exist where it was looked for
    /// (for mirrors, at the registry itself).
    pub fn is_not_found(&self) -> bool {
        match self {
            Self::NotFound { .. } => true,
            Self::AllSources { errors, .. } => errors.last().is_some_and(Self::is_not_found),
            _ => false,
        }
    }

    /// Whether the error is the local store's rather than the registry's.
    pub(crate) fn is_local(&self) -> bool {
        matches!(self, Self::Store(_) | Self::StoreWrite { .. } | Self::Internal(_))
    }
}

/// What a request was about, to name it in errors.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Ctx<'a> {
    /// The host as bake names it (`docker.io`, `localhost:5000`).
    pub registry: &'a str,
    /// What was asked for (`localhost:5000/app:v1`, a blob in a repository).
    pub reference: &'a str,
    /// Pushing or pulling, for "denied" messages.
    pub push: bool,
    /// Whether the request went without credentials.
    pub anonymous: bool,
    /// Why credentials found for the registry could not be used.
    pub credential_note: Option<&'a str>,
    /// The connect timeout in force, to name it when it runs out.
    pub connect_timeout: Duration,
}

/// Maps an oci-client error to a bake error.
pub(crate) fn classify(err: OciDistributionError, ctx: Ctx<'_>) -> RegistryError {
    let registry = ctx.registry.to_owned();
    // Whatever went wrong, a request that ended up somewhere a registry must
    // never send bake is reported as that, not as the symptom (a login
    // problem, a timeout) the place answered with.
    let url = match &err {
        OciDistributionError::RequestError(e) => e.url().map(ToString::to_string),
        OciDistributionError::ServerError { url, .. } | OciDistributionError::UnauthorizedError { url } => {
            Some(url.clone())
        }
        _ => None,
    };
    if let Some(redirected) = url.and_then(|url| forbidden_target(ctx.registry, &url)) {
        return redirected;
    }
    match err {
        OciDistributionError::RequestError(e) => match e.status() {
            Some(status) => from_status(status.as_u16(), &e.to_string(), ctx),
            None if e.is_connect() && e.is_timeout() => super::deadline::timeout(
                ctx,
                super::deadline::Limit::Connect,
                ctx.connect_timeout,
                format!("connecting for {}", ctx.reference),
            ),
            None => unreachable_error(ctx, describe_chain(&e), OciDistributionError::RequestError(e)),
        },
        OciDistributionError::IoError(e) => from_io(e, ctx),
        OciDistributionError::UnauthorizedError { .. } => unauthorized(ctx),
        OciDistributionError::AuthenticationFailure(reason) => {
            let mut e = unauthorized(ctx);
            if let RegistryError::Unauthorized { help, .. } = &mut e {
                let reason = reason.trim();
                if !reason.is_empty() {
                    *help = format!("{help} (the token service said: {})", truncate(reason, 200));
                }
            }
            e
        }
        OciDistributionError::ServerError { code, message, .. } => from_status(code, &message, ctx),
        OciDistributionError::RegistryError { envelope, .. } => {
            let message = envelope.errors.iter().map(|e| e.message.as_str()).collect::<Vec<_>>().join("; ");
            match envelope.errors.first().map(|e| &e.code) {
                Some(OciErrorCode::Unauthorized) => unauthorized(ctx),
                Some(OciErrorCode::Denied) => denied(ctx),
                Some(OciErrorCode::Toomanyrequests) => RegistryError::Server { registry, status: 429, message },
                Some(
                    OciErrorCode::ManifestUnknown
                    | OciErrorCode::NameUnknown
                    | OciErrorCode::BlobUnknown
                    | OciErrorCode::NotFound,
                ) => RegistryError::NotFound { reference: ctx.reference.to_owned() },
                _ => RegistryError::Rejected {
                    registry,
                    what: ctx.reference.to_owned(),
                    message: if message.is_empty() { envelope.to_string() } else { message },
                },
            }
        }
        OciDistributionError::DigestError(DigestError::VerificationError { expected, actual }) => {
            RegistryError::DigestMismatch { registry, what: ctx.reference.to_owned(), expected, actual }
        }
        other => RegistryError::Protocol { registry, message: other.to_string() },
    }
}

/// The error for a request that reached `url` when it should not have: a
/// link-local or unspecified address from any registry, or the loopback from
/// a registry that is not itself on the loopback (an HTTP redirect took it
/// there; the registry's own address never qualifies).
fn forbidden_target(registry: &str, url: &str) -> Option<RegistryError> {
    let host = host_of(url)?;
    if host.eq_ignore_ascii_case(registry) || host_of(&format!("//{registry}")) == Some(host) {
        return None;
    }
    let ip: std::net::IpAddr = host.trim_start_matches('[').trim_end_matches(']').parse().ok()?;
    let why = match ip {
        std::net::IpAddr::V4(v4) if v4.is_link_local() => "a link-local address",
        std::net::IpAddr::V6(v6) if v6.is_unicast_link_local() => "a link-local address",
        ip if ip.is_unspecified() => "an unspecified address",
        ip if ip.is_loopback() && !crate::config::is_loopback(registry) => "this machine's loopback",
        _ => return None,
    };
    Some(RegistryError::Redirected { registry: registry.to_owned(), target: host.to_owned(), why })
}

/// The host of a URL (`[::1]` keeps its brackets), without user info or port.
fn host_of(url: &str) -> Option<&str> {
    let rest = url.split_once("//").map_or(url, |(_, rest)| rest);
    let authority = rest.split(['/', '?', '#']).next()?;
    let authority = authority.rsplit_once('@').map_or(authority, |(_, host)| host);
    let host = if authority.starts_with('[') {
        authority.split_inclusive(']').next()?
    } else {
        authority.split(':').next()?
    };
    (!host.is_empty()).then_some(host)
}

/// An error while reading a body: a digest mismatch found by oci-client's
/// verifying stream, or a connection that broke off.
pub(crate) fn from_io(e: std::io::Error, ctx: Ctx<'_>) -> RegistryError {
    if let Some(DigestError::VerificationError { expected, actual }) =
        e.get_ref().and_then(|inner| inner.downcast_ref::<DigestError>())
    {
        return RegistryError::DigestMismatch {
            registry: ctx.registry.to_owned(),
            what: ctx.reference.to_owned(),
            expected: expected.clone(),
            actual: actual.clone(),
        };
    }
    let reason = match e.get_ref() {
        Some(inner) => describe_chain(inner),
        None => e.to_string(),
    };
    unreachable_error(ctx, format!("the transfer broke off ({reason})"), OciDistributionError::IoError(e))
}

/// The innermost cause of an error, which says what happened: reqwest's
/// "error sending request for url (…)" is "Connection refused" at heart.
fn describe_chain(e: &dyn std::error::Error) -> String {
    let mut cause: &dyn std::error::Error = e;
    while let Some(next) = cause.source() {
        cause = next;
    }
    cause.to_string()
}

fn unreachable_error(ctx: Ctx<'_>, reason: String, cause: OciDistributionError) -> RegistryError {
    RegistryError::Unreachable { registry: ctx.registry.to_owned(), reason, cause: Some(Box::new(cause)) }
}

fn unreachable_help(registry: &str) -> String {
    if registry == crate::reference::DEFAULT_REGISTRY {
        "check the network; to pull Docker Hub images through another registry, add \
         `registry \"docker.io\" { mirror \"HOST\" }` to bake's config file"
            .to_owned()
    } else if crate::config::is_loopback(registry) {
        format!("is a registry running on {registry}? (bake speaks plain HTTP to loopback registries)")
    } else {
        format!(
            "check the registry's name and the network; if {registry} speaks plain HTTP, add \
             `registry \"{registry}\" insecure=#true` to bake's config file"
        )
    }
}

fn from_status(status: u16, message: &str, ctx: Ctx<'_>) -> RegistryError {
    match status {
        401 => unauthorized(ctx),
        403 => denied(ctx),
        404 => RegistryError::NotFound { reference: ctx.reference.to_owned() },
        500..=599 if let Some(rejection) = rejection(message) => RegistryError::Rejected {
            registry: ctx.registry.to_owned(),
            what: ctx.reference.to_owned(),
            message: rejection,
        },
        408 | 429 | 500..=599 => {
            RegistryError::Server { registry: ctx.registry.to_owned(), status, message: truncate(message.trim(), 300) }
        }
        _ => RegistryError::Rejected {
            registry: ctx.registry.to_owned(),
            what: ctx.reference.to_owned(),
            message: format!("HTTP {status} {}", truncate(message.trim(), 300)),
        },
    }
}

/// The registry's own verdict in a 5xx body, when it is a final one.
/// distribution answers some invalid manifests with 500 and an error list
/// that holds `UNKNOWN` next to the real reason (`MANIFEST_BLOB_UNKNOWN`);
/// retrying those cannot help.
fn rejection(body: &str) -> Option<String> {
    let envelope: OciEnvelope = serde_json::from_str(body).ok()?;
    let reasons: Vec<String> = envelope
        .errors
        .iter()
        .filter(|e| {
            matches!(
                e.code,
                OciErrorCode::ManifestBlobUnknown
                    | OciErrorCode::ManifestInvalid
                    | OciErrorCode::ManifestUnverified
                    | OciErrorCode::BlobUnknown
                    | OciErrorCode::NameInvalid
                    | OciErrorCode::TagInvalid
                    | OciErrorCode::DigestInvalid
                    | OciErrorCode::SizeInvalid
                    | OciErrorCode::Unsupported
            )
        })
        .map(|e| match e.detail.as_str() {
            Some(detail) if !detail.is_empty() => format!("{} ({detail})", e.message),
            _ => e.message.clone(),
        })
        .collect();
    (!reasons.is_empty()).then(|| reasons.join("; "))
}

fn unauthorized(ctx: Ctx<'_>) -> RegistryError {
    let login = match ctx.registry {
        // `docker login` takes no argument for Docker Hub.
        crate::reference::DEFAULT_REGISTRY => "run `docker login`".to_owned(),
        registry => format!("run `docker login {registry}`"),
    };
    let help = match (ctx.anonymous, ctx.credential_note) {
        (true, Some(note)) => format!("{login}; {note}"),
        (true, None) => format!("{login}: bake reads the credentials Docker stores (~/.docker/config.json)"),
        (false, _) => format!("the registry refused the credentials Docker stored for it; {login} again"),
    };
    RegistryError::Unauthorized { registry: ctx.registry.to_owned(), reference: ctx.reference.to_owned(), help }
}

fn denied(ctx: Ctx<'_>) -> RegistryError {
    RegistryError::Denied {
        registry: ctx.registry.to_owned(),
        reference: ctx.reference.to_owned(),
        action: if ctx.push { "push to" } else { "pull from" },
    }
}

fn truncate(s: &str, max: usize) -> String {
    if s.len() <= max {
        return s.to_owned();
    }
    let mut end = max;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}…", &s[..end])
}

impl RegistryError {
    /// Whose the error is: an image the user named that does not exist or
    /// cannot be used is theirs; a registry that fails, refuses or sends
    /// bad bytes is the environment's.
    pub fn tier(&self) -> crate::Tier {
        match self {
            Self::NotFound { .. } | Self::NoPlatform { .. } | Self::WrongPlatform { .. } | Self::Unsupported { .. } => {
                crate::Tier::Input
            }
            Self::Store(e) => e.tier(),
            Self::Internal(_) => crate::Tier::Bug,
            Self::Unreachable { .. }
            | Self::Timeout { .. }
            | Self::Server { .. }
            | Self::Unauthorized { .. }
            | Self::Denied { .. }
            | Self::Rejected { .. }
            | Self::IndexTooDeep { .. }
            | Self::TooLarge { .. }
            | Self::DigestMismatch { .. }
            | Self::Invalid { .. }
            | Self::Redirected { .. }
            | Self::Protocol { .. }
            | Self::MissingBlob { .. }
            | Self::MissingImage { .. }
            | Self::PushUnsupported { .. }
            | Self::AllSources { .. }
            | Self::Client { .. }
            | Self::StoreWrite { .. } => crate::Tier::Environment,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ctx() -> Ctx<'static> {
        Ctx {
            registry: "r.example.com",
            reference: "r.example.com/a:1",
            push: false,
            anonymous: true,
            credential_note: None,
            connect_timeout: Duration::from_secs(15),
        }
    }

    #[test]
    fn redirects_to_link_local_or_foreign_loopback_are_named() {
        let meta = OciDistributionError::ServerError {
            code: 401,
            url: "http://169.254.169.254/latest/meta-data".into(),
            message: "no".into(),
        };
        let e = classify(meta, ctx());
        assert!(
            matches!(&e, RegistryError::Redirected { target, why, .. } if target == "169.254.169.254" && *why == "a link-local address"),
            "{e:?}"
        );
        let e = classify(OciDistributionError::UnauthorizedError { url: "https://[fe80::1]:8080/x".into() }, ctx());
        assert!(matches!(&e, RegistryError::Redirected { target, .. } if target == "[fe80::1]"), "{e:?}");
        let e = classify(OciDistributionError::UnauthorizedError { url: "http://127.0.0.1:9/v2/".into() }, ctx());
        assert!(matches!(&e, RegistryError::Redirected { why, .. } if *why == "this machine's loopback"), "{e:?}");
        // The registry's own address, and a CDN, are ordinary.
        let own = OciDistributionError::UnauthorizedError { url: "https://r.example.com/v2/x".into() };
        assert!(matches!(classify(own, ctx()), RegistryError::Unauthorized { .. }));
        let cdn = OciDistributionError::ServerError {
            code: 503,
            url: "https://cdn.example.net/b".into(),
            message: String::new(),
        };
        assert!(matches!(classify(cdn, ctx()), RegistryError::Server { .. }));
        assert_eq!(host_of("http://u:p@h.example:5000/v2/"), Some("h.example"));
        assert_eq!(host_of("http://[::1]:5000/v2/"), Some("[::1]"));
    }

    #[test]
    fn statuses_map_to_typed_errors() {
        let server = |code| OciDistributionError::ServerError { code, url: "u".into(), message: "m".into() };
        assert!(matches!(classify(server(401), ctx()), RegistryError::Unauthorized { .. }));
        assert!(matches!(classify(server(403), ctx()), RegistryError::Denied { .. }));
        assert!(matches!(classify(server(404), ctx()), RegistryError::NotFound { .. }));
        assert!(classify(server(503), ctx()).is_transient());
        let verdict = OciDistributionError::ServerError {
            code: 500,
            url: "u".into(),
            message: r#"{"errors":[{"code":"UNKNOWN","message":"unknown error"},
                {"code":"MANIFEST_BLOB_UNKNOWN","message":"blob unknown to registry","detail":"sha256:ab"}]}"#
                .into(),
        };
        let e = classify(verdict, ctx());
        assert!(
            matches!(&e, RegistryError::Rejected { message, .. } if message == "blob unknown to registry (sha256:ab)"),
            "{e:?}"
        );
        assert!(classify(server(429), ctx()).is_transient());
        assert!(!classify(server(400), ctx()).is_transient());
        let e = classify(OciDistributionError::UnauthorizedError { url: "u".into() }, ctx());
        let RegistryError::Unauthorized { help, .. } = &e else { panic!("{e:?}") };
        assert!(help.contains("docker login r.example.com"), "{help}");
        let hub = Ctx { registry: "docker.io", ..ctx() };
        let RegistryError::Unauthorized { help, .. } = classify(server(401), hub) else { panic!() };
        assert!(help.starts_with("run `docker login`"), "{help}");
    }

    #[test]
    fn digest_errors_inside_io_errors_are_mismatches() {
        let inner = DigestError::VerificationError { expected: "sha256:a".into(), actual: "sha256:b".into() };
        let e = from_io(std::io::Error::other(inner), ctx());
        assert!(matches!(e, RegistryError::DigestMismatch { .. }), "{e:?}");
        let e = from_io(std::io::Error::other("reset"), ctx());
        assert!(e.is_unreachable(), "{e:?}");
    }

    #[test]
    fn unreachable_through_every_source() {
        let down = || RegistryError::Unreachable { registry: "a".into(), reason: "refused".into(), cause: None };
        let all =
            RegistryError::AllSources { reference: "x".into(), registry: "a".into(), errors: vec![down(), down()] };
        assert!(all.is_unreachable());
        let mixed = RegistryError::AllSources {
            reference: "x".into(),
            registry: "a".into(),
            errors: vec![down(), RegistryError::NotFound { reference: "x".into() }],
        };
        assert!(!mixed.is_unreachable());
        assert!(mixed.is_not_found());
    }
}
