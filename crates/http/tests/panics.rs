//! Unexpected errors and panics become a 500 envelope that says nothing internal.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    reason = "a test fails loudly on the first surprise"
)]

use actix_web::middleware::from_fn;
use actix_web::{App, HttpResponse, test, web};
use baton_http::ApiError;
use baton_http::middleware::envelope_and_request_id;

async fn panics() -> HttpResponse {
    panic!("secret internals in a panic message")
}

async fn fails() -> Result<HttpResponse, ApiError> {
    Err(ApiError::internal(
        "connection to db-host:5432 refused, password=hunter2",
    ))
}

#[actix_web::test]
async fn a_panicking_handler_is_a_500_envelope_with_only_a_request_id() {
    let app = test::init_service(
        App::new()
            .wrap(from_fn(envelope_and_request_id))
            .route("/panic", web::get().to(panics))
            .route("/fail", web::get().to(fails)),
    )
    .await;
    for path in ["/panic", "/fail"] {
        // The real server renders an `Err` from the middleware with `error_response`.
        let response =
            match test::try_call_service(&app, test::TestRequest::get().uri(path).to_request())
                .await
            {
                Ok(response) => response.into_parts().1,
                Err(err) => err.error_response(),
            };
        assert_eq!(response.status(), 500, "{path}");
        let id = response
            .headers()
            .get("x-request-id")
            .unwrap()
            .to_str()
            .unwrap()
            .to_owned();
        let bytes = actix_web::body::to_bytes(response.into_body())
            .await
            .unwrap();
        let body: serde_json::Value = serde_json::from_slice(&bytes).unwrap();
        assert_eq!(body["error"]["code"], "internal_error");
        assert_eq!(body["error"]["request_id"], id.as_str());
        let text = body.to_string();
        assert!(
            !text.contains("secret") && !text.contains("hunter2") && !text.contains("db-host"),
            "{text}"
        );
    }
}
