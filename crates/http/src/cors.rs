//! Cross-origin requests: which web pages, by origin, may call the API from a browser.
//! Off by default (no origin allowed: a browser keeps other origins' pages from
//! reading any answer). When on, preflights are answered for every route with the
//! methods and request headers the API uses, and answers expose the headers a client
//! reads. Credentials are never cookies (keys travel in `Authorization`, or as a
//! stream token in the URL), so no `Access-Control-Allow-Credentials`.

use std::time::Duration;

use actix_cors::Cors;
use actix_web::http::{Method, header};

use crate::error::REQUEST_ID_HEADER;

/// Which origins may call the API from a browser, and how long a browser may keep a
/// preflight's answer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CorsOptions {
    pub allowed_origins: AllowedOrigins,
    pub max_age: Duration,
}

/// The origins whose pages may read the API's answers.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub enum AllowedOrigins {
    /// None: CORS is off.
    #[default]
    None,
    /// Any origin (`*`).
    Any,
    /// These, each `scheme://host[:port]` as a browser sends it in `Origin`.
    Listed(Vec<String>),
}

/// A configured origin that is not one a browser could send.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "{origin:?} is not an origin: write it as a browser sends it, `scheme://host[:port]` in lower case with no path (e.g. \"https://app.example.com\"), or \"*\" alone for any"
)]
pub struct InvalidOrigin {
    pub origin: String,
}

impl AllowedOrigins {
    /// From a configured list: empty is off, `["*"]` is any origin, else each one must
    /// be an origin exactly as browsers send it (`Origin` is compared byte for byte).
    pub fn from_list(origins: Vec<String>) -> Result<AllowedOrigins, InvalidOrigin> {
        if origins.is_empty() {
            return Ok(AllowedOrigins::None);
        }
        if origins == ["*"] {
            return Ok(AllowedOrigins::Any);
        }
        for origin in &origins {
            if !is_origin(origin) {
                return Err(InvalidOrigin {
                    origin: origin.clone(),
                });
            }
        }
        Ok(AllowedOrigins::Listed(origins))
    }
}

/// `http://` or `https://`, then a host and perhaps a port: nothing else, lower case.
fn is_origin(origin: &str) -> bool {
    let Some(authority) = origin
        .strip_prefix("https://")
        .or_else(|| origin.strip_prefix("http://"))
    else {
        return false;
    };
    !authority.is_empty()
        && authority.parse::<actix_web::http::uri::Authority>().is_ok()
        && !authority.contains('@')
        && authority.bytes().all(|b| !b.is_ascii_uppercase())
}

impl Default for CorsOptions {
    fn default() -> Self {
        CorsOptions {
            allowed_origins: AllowedOrigins::None,
            max_age: DEFAULT_MAX_AGE,
        }
    }
}

/// How long a browser may reuse a preflight's answer (Chromium caps it at 2 hours).
pub const DEFAULT_MAX_AGE: Duration = Duration::from_secs(600);

/// Methods the API's routes use.
const METHODS: [Method; 5] = [
    Method::GET,
    Method::HEAD,
    Method::POST,
    Method::PATCH,
    Method::DELETE,
];

/// Request headers a client of the API sends (besides the ones browsers always allow).
fn request_headers() -> [header::HeaderName; 6] {
    [
        header::AUTHORIZATION,
        header::CONTENT_TYPE,
        header::IF_NONE_MATCH,
        header::HeaderName::from_static("idempotency-key"),
        header::HeaderName::from_static("last-event-id"),
        REQUEST_ID_HEADER,
    ]
}

/// Answer headers a client reads, which a browser hides from a page unless exposed.
fn exposed_headers() -> [header::HeaderName; 7] {
    [
        header::LOCATION,
        header::RETRY_AFTER,
        header::ETAG,
        header::ALLOW,
        header::WWW_AUTHENTICATE,
        header::HeaderName::from_static("idempotent-replayed"),
        REQUEST_ID_HEADER,
    ]
}

impl CorsOptions {
    pub fn enabled(&self) -> bool {
        self.allowed_origins != AllowedOrigins::None
    }

    /// The middleware; with CORS off, one that allows no origin (the server does not
    /// install it then).
    pub fn middleware(&self) -> Cors {
        let mut cors = Cors::default()
            .allowed_methods(METHODS)
            .allowed_headers(request_headers())
            .expose_headers(exposed_headers())
            .max_age(Some(self.max_age.as_secs() as usize));
        match &self.allowed_origins {
            AllowedOrigins::None => {}
            AllowedOrigins::Any => cors = cors.allow_any_origin().send_wildcard(),
            AllowedOrigins::Listed(origins) => {
                for origin in origins {
                    cors = cors.allowed_origin(origin);
                }
            }
        }
        cors
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn origins_are_checked_as_browsers_send_them() {
        assert_eq!(AllowedOrigins::from_list(vec![]), Ok(AllowedOrigins::None));
        assert_eq!(
            AllowedOrigins::from_list(vec!["*".into()]),
            Ok(AllowedOrigins::Any)
        );
        let good = vec![
            "https://app.example.com".into(),
            "http://localhost:5173".into(),
        ];
        assert_eq!(
            AllowedOrigins::from_list(good.clone()),
            Ok(AllowedOrigins::Listed(good))
        );
        for bad in [
            "app.example.com",
            "https://app.example.com/",
            "https://app.example.com/path",
            "https://App.example.com",
            "ftp://example.com",
            "https://",
            "https://user@example.com",
            "https://a b",
        ] {
            assert!(
                AllowedOrigins::from_list(vec![bad.into()]).is_err(),
                "{bad} was taken"
            );
        }
        // "*" means any only alone.
        assert!(AllowedOrigins::from_list(vec!["*".into(), "https://a.example".into()]).is_err());
    }
}
