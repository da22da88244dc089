//! Whether the database schema is the one this build needs.

use baton_domain::*;
use diesel_async::RunQueryDsl;

use super::Conn;
use crate::error::from_diesel;

#[derive(diesel::QueryableByName)]
pub(super) struct AppliedVersion {
    #[diesel(sql_type = diesel::sql_types::Nullable<diesel::sql_types::Text>)]
    version: Option<String>,
}

pub(crate) async fn check_ready(conn: &mut Conn, latest: &str) -> Result<(), StoreError> {
    let applied: AppliedVersion =
        diesel::sql_query("SELECT MAX(version) AS version FROM __diesel_schema_migrations")
            .get_result(conn)
            .await
            .map_err(from_diesel)?;
    match applied.version {
        Some(version) if version.as_str() >= latest => Ok(()),
        other => Err(StoreError::Unavailable(format!(
            "the database schema is at migration {} but this build needs {latest}; run `baton migrate`",
            other.as_deref().unwrap_or("none")
        ))),
    }
}
