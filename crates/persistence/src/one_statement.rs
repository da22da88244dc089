//! Several writes as one PostgreSQL statement: every write but the last becomes a
//! data-modifying `WITH` of the last. One statement is one round trip and its own
//! transaction (all of it is kept or none), and PostgreSQL runs each `WITH` whether
//! or not anything reads it. Each write keeps its own Diesel query (its `Insertable`
//! row, its binds): the combination only joins their SQL, numbering the binds on.

use diesel::pg::Pg;
use diesel::query_builder::{AstPass, QueryFragment, QueryId};
use diesel::result::QueryResult;

/// Writes run as one statement, in order (see the module).
pub(crate) struct OneStatement<'a> {
    writes: Vec<Box<dyn QueryFragment<Pg> + Send + 'a>>,
}

impl<'a> OneStatement<'a> {
    pub(crate) fn new() -> Self {
        OneStatement { writes: Vec::new() }
    }

    /// Adds a write after those already added.
    pub(crate) fn then(mut self, write: impl QueryFragment<Pg> + Send + 'a) -> Self {
        self.writes.push(Box::new(write));
        self
    }
}

impl QueryFragment<Pg> for OneStatement<'_> {
    fn walk_ast<'b>(&'b self, mut out: AstPass<'_, 'b, Pg>) -> QueryResult<()> {
        let Some((last, first)) = self.writes.split_last() else {
            return Err(diesel::result::Error::QueryBuilderError(
                "a statement of no writes".into(),
            ));
        };
        for (number, write) in first.iter().enumerate() {
            out.push_sql(if number == 0 { "WITH " } else { ", " });
            out.push_sql(&format!("write_{number} AS ("));
            write.walk_ast(out.reborrow())?;
            out.push_sql(") ");
        }
        last.walk_ast(out.reborrow())
    }

    /// The same writes make the same SQL text, so its prepared statement is kept
    /// (the connection keys it by that text, see [`QueryId`] below).
    fn is_safe_to_cache_prepared(&self, backend: &Pg) -> QueryResult<bool> {
        for write in &self.writes {
            // On the write itself: the `Box`'s own answer would walk the SQL instead,
            // and miss a write's own say (see `crate::statement_cache`).
            if !(**write).is_safe_to_cache_prepared(backend)? {
                return Ok(false);
            }
        }
        Ok(true)
    }
}

/// Not a static id: the connection keys its statement cache by the SQL text.
impl QueryId for OneStatement<'_> {
    type QueryId = ();
    const HAS_STATIC_QUERY_ID: bool = false;
}

#[cfg(test)]
mod tests {
    use diesel::prelude::*;

    use super::*;
    use crate::schema::events;
    use crate::statement_cache::CacheBySql;

    fn insert(task: i64) -> impl QueryFragment<Pg> + Send {
        diesel::insert_into(events::table)
            .values((
                events::task_id.eq(task),
                events::seq.eq(1_i64),
                events::turn_id.eq(1_i64),
                events::kind.eq("final"),
                events::data.eq("{}"),
                events::created_at.eq(0_i64),
            ))
            .by_sql()
    }

    #[test]
    fn writes_join_as_withs_of_the_last_with_their_binds_numbered_on() {
        let statement = OneStatement::new().then(insert(1)).then(insert(2));
        let sql = diesel::debug_query::<Pg, _>(&statement).to_string();
        assert!(
            sql.starts_with("WITH write_0 AS (INSERT INTO \"events\""),
            "{sql}"
        );
        assert!(sql.contains(") INSERT INTO \"events\""), "{sql}");
        assert!(sql.contains("$7") && !sql.contains("$13"), "{sql}");
    }

    #[test]
    fn a_statement_of_cacheable_writes_is_kept_prepared() {
        // Diesel's own answer for raw SQL is "no"; its `by_sql` says yes, and the
        // statement must ask each write, not walk their SQL.
        let raw = || diesel::sql_query("SELECT 1");
        let statement = OneStatement::new().then(insert(1)).then(raw().by_sql());
        assert!(statement.is_safe_to_cache_prepared(&Pg).unwrap());
        let uncached = OneStatement::new().then(insert(1)).then(raw());
        assert!(!uncached.is_safe_to_cache_prepared(&Pg).unwrap());
    }

    #[test]
    fn a_statement_of_no_writes_is_an_error_not_empty_sql() {
        let mut builder = diesel::pg::PgQueryBuilder::default();
        assert!(OneStatement::new().to_sql(&mut builder, &Pg).is_err());
    }
}
