//! Prepared statements kept for the hot writes. Diesel prepares every `UPDATE` (and
//! some `INSERT`s) afresh on each run, because one query *type* may render different
//! SQL (a changeset's `None` fields are left out) and its cache may key statements by
//! type. Keyed by the SQL text instead, reuse is always sound: the same text is the
//! same statement. [`BySql`] gives a query exactly that key.

use diesel::backend::Backend;
use diesel::query_builder::{AstPass, Query, QueryFragment, QueryId};
use diesel::result::QueryResult;

/// A query whose prepared statement is cached under its SQL text.
#[derive(Debug, Clone, Copy)]
pub(crate) struct BySql<Q>(Q);

/// `.by_sql()` on any query: see [`BySql`]. Only for queries whose SQL text takes few
/// shapes (not an `IN` list of any length), since each shape is kept.
pub(crate) trait CacheBySql: Sized {
    fn by_sql(self) -> BySql<Self> {
        BySql(self)
    }
}

impl<Q> CacheBySql for Q {}

impl<Q: QueryFragment<DB>, DB: Backend> QueryFragment<DB> for BySql<Q> {
    fn walk_ast<'b>(&'b self, pass: AstPass<'_, 'b, DB>) -> QueryResult<()> {
        self.0.walk_ast(pass)
    }

    fn is_safe_to_cache_prepared(&self, _backend: &DB) -> QueryResult<bool> {
        Ok(true)
    }
}

/// Not a static id: connections then key the cache by the SQL text, never by type.
impl<Q> QueryId for BySql<Q> {
    type QueryId = ();
    const HAS_STATIC_QUERY_ID: bool = false;
}

impl<Q: Query> Query for BySql<Q> {
    type SqlType = Q::SqlType;
}
