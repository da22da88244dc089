//! Fixed files the binary serves — the OpenAPI document, the console's page and
//! scripts: gzipped once, with an `ETag` per encoding, answered `304` when the client
//! has them, and sent gzipped to clients that take it.

use std::sync::Arc;

use actix_web::http::header::{
    self, AcceptEncoding, ETag, Encoding, EntityTag, Header, IfNoneMatch, Preference, Quality,
};
use actix_web::{HttpRequest, HttpResponse, HttpResponseBuilder, web};

/// A file's bytes as served, gzipped, and their `ETag`s (one per encoding: they are
/// different bytes).
#[derive(Debug, Clone)]
pub struct Asset {
    content_type: &'static str,
    bytes: &'static [u8],
    gzipped: Arc<[u8]>,
    etag: EntityTag,
    gzipped_etag: EntityTag,
}

impl Asset {
    pub fn new(content_type: &'static str, bytes: &'static [u8]) -> Self {
        use sha2::Digest;
        let digest = sha2::Sha256::digest(bytes);
        let hex: String = digest.iter().take(12).map(|b| format!("{b:02x}")).collect();
        Asset {
            content_type,
            bytes,
            gzipped: gzip(bytes).into(),
            etag: EntityTag::new_strong(hex.clone()),
            gzipped_etag: EntityTag::new_strong(format!("{hex}-gzip")),
        }
    }

    /// The answer to `req`: `304` when its `If-None-Match` names this file (in either
    /// encoding, compared weakly as RFC 9110 says for `If-None-Match`, or `*`), else
    /// the file, gzipped if the client takes it. `head` adds headers of the caller's.
    pub fn respond(
        &self,
        req: &HttpRequest,
        head: impl FnOnce(&mut HttpResponseBuilder),
    ) -> HttpResponse {
        let gzipped = accepts_gzip(req);
        let etag = if gzipped {
            &self.gzipped_etag
        } else {
            &self.etag
        };
        let unchanged = self.unchanged_for(req);
        let mut answer = if unchanged {
            HttpResponse::NotModified()
        } else {
            HttpResponse::Ok()
        };
        answer
            .insert_header(ETag(etag.clone()))
            .insert_header((header::VARY, "accept-encoding"));
        head(&mut answer);
        if unchanged {
            return answer.finish();
        }
        answer.content_type(self.content_type);
        if gzipped {
            answer
                .insert_header((header::CONTENT_ENCODING, "gzip"))
                .body(web::Bytes::from_owner(self.gzipped.clone()))
        } else {
            answer.body(self.bytes)
        }
    }

    fn unchanged_for(&self, req: &HttpRequest) -> bool {
        match IfNoneMatch::parse(req) {
            Ok(IfNoneMatch::Any) => true,
            Ok(IfNoneMatch::Items(tags)) => tags
                .iter()
                .any(|tag| tag.weak_eq(&self.etag) || tag.weak_eq(&self.gzipped_etag)),
            Err(_) => false,
        }
    }
}

/// `bytes` gzipped (at the best ratio: this runs once per file and process).
fn gzip(bytes: &[u8]) -> Vec<u8> {
    use std::io::Write;
    let mut encoder = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::best());
    // Writing into a Vec cannot fail.
    let _ = encoder.write_all(bytes);
    encoder.finish().unwrap_or_default()
}

/// Whether the request's `Accept-Encoding` (parsed by actix-web's typed header) takes
/// gzip: named, or `*`, with a quality above 0, and not refused by name (`gzip;q=0`).
pub(crate) fn accepts_gzip(req: &HttpRequest) -> bool {
    let Ok(AcceptEncoding(items)) = AcceptEncoding::parse(req) else {
        return false;
    };
    // `x-gzip` is the same coding by its old name (RFC 9110, 8.4.1.3).
    let is_gzip = |preference: &Preference<Encoding>| match preference {
        Preference::Specific(Encoding::Unknown(name)) => name.eq_ignore_ascii_case("x-gzip"),
        Preference::Specific(encoding) => *encoding == Encoding::gzip(),
        Preference::Any => false,
    };
    let refused = items
        .iter()
        .any(|item| item.quality == Quality::ZERO && is_gzip(&item.item));
    let taken = items.iter().any(|item| {
        item.quality > Quality::ZERO && (is_gzip(&item.item) || item.item == Preference::Any)
    });
    taken && !refused
}
