//! Idempotency keys: a key's first answer is stored with the claim and replayed.

use baton_domain::*;
use chrono::{DateTime, Utc};
use diesel::prelude::*;
use diesel::result::{DatabaseErrorKind, Error as DieselError};
use diesel_async::RunQueryDsl;

use super::Conn;
use crate::error::from_diesel;
use crate::models::*;
use crate::queries::TxError;
use crate::schema::idempotency_keys;
use crate::statement_cache::CacheBySql;

/// The stored answer for a live idempotency key: `Some` to replay it, `None` if
/// the key is new (an expired record of it is deleted first), `KeyReused` if it
/// answered another request.
pub(super) async fn replay(
    conn: &mut Conn,
    agent: AgentId,
    record: Option<&IdempotencyRecord>,
    now: i64,
) -> Result<Option<Accepted>, TxError> {
    let Some(record) = record else {
        return Ok(None);
    };
    let this_key = idempotency_keys::agent_id
        .eq(agent.0)
        .and(idempotency_keys::idempotency_key.eq(&record.key));
    diesel::delete(
        idempotency_keys::table.filter(this_key.and(idempotency_keys::expires_at.le(now))),
    )
    .execute(conn)
    .await?;
    let found: Option<IdempotencyRow> = idempotency_keys::table
        .filter(this_key)
        .select(IdempotencyRow::as_select())
        .first(conn)
        .await
        .optional()?;
    match found {
        None => Ok(None),
        Some(row) if row.request_hash == record.request_hash => Ok(Some(row.into_accepted()?)),
        Some(_) => Err(TxError::KeyReused),
    }
}

/// Stores the key with the answer, in the claim's transaction.
pub(super) async fn remember(
    conn: &mut Conn,
    record: Option<&IdempotencyRecord>,
    accepted: &Accepted,
) -> Result<(), TxError> {
    let Some(record) = record else { return Ok(()) };
    diesel::insert_into(idempotency_keys::table)
        .values(&NewIdempotencyRow::new(record, accepted)?)
        .by_sql()
        .execute(conn)
        .await
        .map_err(|err| match err {
            DieselError::DatabaseError(DatabaseErrorKind::UniqueViolation, _) => TxError::KeyRace,
            other => TxError::Db(other),
        })?;
    Ok(())
}

pub(crate) async fn purge_idempotency_keys(
    conn: &mut Conn,
    now: DateTime<Utc>,
) -> Result<u64, StoreError> {
    let purged = diesel::delete(
        idempotency_keys::table.filter(idempotency_keys::expires_at.le(micros(now))),
    )
    .execute(conn)
    .await
    .map_err(from_diesel)?;
    Ok(purged as u64)
}
