//! While the server drains (the first step of a graceful stop, [`crate::Shutdown`]),
//! new requests are refused with `503 shutting_down`; the probes and `/metrics` keep
//! answering (liveness stays up, readiness says "shutting down" itself). This layer
//! sits inside the CORS layer, so that a page on another origin can read the refusal,
//! and inside the envelope, which renders, logs and counts it like every answer.

use actix_web::Error;
use actix_web::body::{BoxBody, MessageBody};
use actix_web::dev::{ServiceRequest, ServiceResponse};
use actix_web::middleware::Next;

use crate::error::{ApiError, ErrorCode};

pub async fn refuse_while_draining(
    req: ServiceRequest,
    next: Next<impl MessageBody + 'static>,
) -> Result<ServiceResponse<BoxBody>, Error> {
    let probe = matches!(req.path(), "/healthz" | "/readyz" | "/metrics");
    let draining = !probe
        && req
            .app_data::<actix_web::web::Data<crate::ApiState>>()
            .is_some_and(|state| state.shutdown.draining.is_cancelled());
    if draining {
        return Ok(req.error_response(ApiError::new(
            ErrorCode::ShuttingDown,
            "The server is shutting down and takes no new requests; retry in a moment (another instance may answer).",
        )));
    }
    Ok(next.call(req).await?.map_into_boxed_body())
}
