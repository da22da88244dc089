//! A playing turn: its output recorded as it comes, its input read, its end.

use baton_domain::*;
use chrono::{DateTime, Utc};
use diesel::prelude::*;
use diesel_async::RunQueryDsl;

use super::events::append_events;
use super::messages::{insert_message, message_event, open_text, save_text};
use super::queue::hand_on;
use super::webhooks::{Recipients, RecipientsSql, queue_delivery, recipients};
use super::{Conn, Db};
use crate::models::*;
use crate::queries::{REQUIRES_ACTION, RUNNING, TxError};
use crate::schema::{files, messages, tasks, turns};
use crate::statement_cache::CacheBySql;

/// The running turn, if `holder` holds its lease and plays its current attempt.
#[diesel::dsl::auto_type]
pub(super) fn held_by(turn: TurnId, holder: &Holder) -> _ {
    let id: i64 = turn.0;
    let running: &'static str = RUNNING;
    let owner: String = holder.owner.clone();
    let attempt: i64 = i64::from(holder.attempt);
    turns::table.filter(
        turns::id
            .eq(id)
            .and(turns::status.eq(running))
            .and(turns::lease_owner.eq(owner))
            .and(turns::attempt.eq(attempt)),
    )
}

/// The condition a guard puts on the turn row that is about to end.
pub(super) fn guard_filter(
    guard: &LeaseGuard,
) -> Box<
    dyn BoxableExpression<
            turns::table,
            Db,
            SqlType = diesel::sql_types::Nullable<diesel::sql_types::Bool>,
        >,
> {
    match guard {
        LeaseGuard::Anyone => Box::new(turns::status.eq_any([RUNNING, REQUIRES_ACTION]).nullable()),
        LeaseGuard::Holder(holder) => Box::new(
            turns::status
                .eq(RUNNING)
                .nullable()
                .and(turns::lease_owner.eq(holder.owner.clone()))
                .and(turns::attempt.eq(i64::from(holder.attempt)).nullable()),
        ),
        LeaseGuard::ExpiredBy(cutoff) => Box::new(
            turns::status
                .eq(RUNNING)
                .nullable()
                .and(expired_by(micros(*cutoff))),
        ),
        LeaseGuard::AnswersDueBy(now) => Box::new(
            turns::status
                .eq(REQUIRES_ACTION)
                .and(turns::respond_by.le(micros(*now))),
        ),
    }
}

/// A lease that expired at or before `cutoff`, or none at all.
#[diesel::dsl::auto_type]
pub(super) fn expired_by(cutoff: i64) -> _ {
    turns::lease_expires_at
        .is_null()
        .nullable()
        .or(turns::lease_expires_at.le(cutoff))
}

pub(crate) async fn record_output(
    conn: &mut Conn,
    output: &RecordOutput,
) -> Result<bool, StoreError> {
    let (task, turn, at) = (output.task_id, output.turn_id, output.now);
    super::transaction(conn, async |conn| {
        let batch = i64::from(output.batch);
        // One statement on the usual path: this play's turn, and a batch it
        // has not recorded yet.
        let next: Option<i64> =
            diesel::update(held_by(turn, &output.holder).filter(turns::output_batches.lt(batch)))
                .set(turns::output_batches.eq(batch))
                .returning(turns::id)
                .by_sql()
                .get_result(conn)
                .await
                .optional()?;
        if next.is_none() {
            // Not this play's turn any more — or still its turn, and the batch
            // was written again after its commit: already recorded.
            let held: Option<i64> = held_by(turn, &output.holder)
                .select(turns::id)
                .first(conn)
                .await
                .optional()?;
            return Ok(held.is_some());
        }
        let applied = apply_output(conn, task, turn, &output.ops, at, false, batch > 1).await?;
        append_events(conn, task.0, applied.drafts, micros(at), None, None).await?;
        Ok::<_, TxError>(true)
    })
    .await
    .map_err(TxError::into_store)
}

/// What `apply_output` did: the events of the ops, and the messages it stored or
/// changed, in order.
pub(super) struct Applied {
    pub drafts: Vec<EventDraft>,
    pub messages: Vec<Message>,
}

/// The turn's streamed text message while ops are applied.
enum Streamed<'a> {
    /// Opened by an earlier batch: its row is updated.
    Stored(Message),
    /// Opened by this batch: inserted once, with its text so far (its `text_delta`
    /// events wait for its id).
    New { text: String, deltas: Vec<&'a str> },
}

/// Stores a play's output ops — text deltas into the turn's open streamed message
/// (opened if none is), whole messages — and returns their events. With `closing`,
/// the open streamed message is closed too (the turn ends). Without
/// `recorded_before` (no earlier batch of this play was recorded), no streamed
/// message can be open, and none is looked for.
pub(super) async fn apply_output(
    conn: &mut Conn,
    task: TaskId,
    turn: TurnId,
    ops: &[OutputOp],
    at: DateTime<Utc>,
    closing: bool,
    recorded_before: bool,
) -> Result<Applied, TxError> {
    let mut applied = Applied {
        drafts: Vec::new(),
        messages: Vec::new(),
    };
    let mut open = match recorded_before {
        true => open_text(conn, turn).await?.map(Streamed::Stored),
        false => None,
    };
    for op in ops {
        match op {
            OutputOp::TextDelta(delta) => match &mut open {
                None => {
                    open = Some(Streamed::New {
                        text: delta.clone(),
                        deltas: vec![delta],
                    });
                }
                Some(Streamed::New { text, deltas }) => {
                    text.push_str(delta);
                    deltas.push(delta);
                }
                Some(Streamed::Stored(message)) => {
                    if let Content::Text(text) = &mut message.content {
                        text.content.push_str(delta);
                    }
                    applied.drafts.push(EventDraft {
                        turn_id: turn,
                        kind: EventKind::TextDelta,
                        data: baton_domain::events::text_delta(turn, message.id, delta),
                    });
                }
            },
            OutputOp::Message(content) => {
                if let Some(streamed) = open.take() {
                    keep_streamed(conn, task, turn, streamed, true, at, &mut applied).await?;
                }
                let whole =
                    insert_message(conn, task, turn, MessageParts::assistant(content), None, at)
                        .await?;
                applied.drafts.push(message_event(&whole));
                applied.messages.push(whole);
            }
        }
    }
    if let Some(streamed) = open {
        keep_streamed(conn, task, turn, streamed, closing, at, &mut applied).await?;
    }
    Ok(applied)
}

/// Writes the streamed text message as it stands, closed if `close`, with its events.
async fn keep_streamed(
    conn: &mut Conn,
    task: TaskId,
    turn: TurnId,
    streamed: Streamed<'_>,
    close: bool,
    at: DateTime<Utc>,
    applied: &mut Applied,
) -> Result<(), TxError> {
    let message = match streamed {
        Streamed::Stored(mut message) => {
            save_text(conn, &mut message, close).await?;
            message
        }
        Streamed::New { text, deltas } => {
            let status = match close {
                true => StreamingStatus::Done,
                false => StreamingStatus::InProgress,
            };
            let content = Content::text(text);
            let message = insert_message(
                conn,
                task,
                turn,
                MessageParts::assistant(&content),
                Some(status),
                at,
            )
            .await?;
            applied
                .drafts
                .extend(deltas.into_iter().map(|delta| EventDraft {
                    turn_id: turn,
                    kind: EventKind::TextDelta,
                    data: baton_domain::events::text_delta(turn, message.id, delta),
                }));
            message
        }
    };
    if close {
        applied.drafts.push(message_event(&message));
    }
    applied.messages.push(message);
    Ok(())
}

/// The task with the turn's request metadata.
#[diesel::dsl::auto_type]
pub(super) fn turn_task(task: TaskId, turn: TurnId) -> _ {
    let (task, turn): (i64, i64) = (task.0, turn.0);
    let row: diesel::dsl::AsSelect<TaskRow, Db> = TaskRow::as_select();
    tasks::table
        .inner_join(turns::table)
        .filter(tasks::id.eq(task).and(turns::id.eq(turn)))
        .select((row, turns::metadata))
}

/// The task's messages, in order.
#[diesel::dsl::auto_type]
pub(super) fn task_history(task: TaskId) -> _ {
    let task: i64 = task.0;
    let row: diesel::dsl::AsSelect<MessageRow, Db> = MessageRow::as_select();
    messages::table
        .filter(messages::task_id.eq(task))
        .order(messages::id.asc())
        .select(row)
}

/// The input of a turn from its task's row and history: with the files' bytes, if
/// any message has attachments.
pub(super) async fn turn_input(
    conn: &mut Conn,
    task: TaskId,
    (row, metadata): (TaskRow, String),
    rows: Vec<MessageRow>,
) -> Result<Option<TurnHistory>, StoreError> {
    async {
        let history = rows
            .into_iter()
            .map(MessageRow::into_domain)
            .collect::<Result<Vec<_>, _>>()?;
        // Most tasks have no file: no statement for them on every turn.
        let attached = history
            .iter()
            .any(|message| !message.content.attachments().is_empty());
        let files: Vec<(i64, String, String, Vec<u8>)> = match attached {
            false => Vec::new(),
            true => {
                files::table
                    .filter(files::task_id.eq(task.0))
                    .order(files::id.asc())
                    .select((files::id, files::filename, files::media_type, files::data))
                    .load(conn)
                    .await?
            }
        };
        let files = files
            .into_iter()
            .map(|(file_id, filename, media_type, data)| StoredFile {
                file_id,
                task_id: task,
                filename,
                media_type,
                data,
            })
            .collect();
        Ok::<_, TxError>(Some(TurnHistory {
            task: row.into_domain()?,
            metadata: parse_json("turns.metadata", &metadata)?,
            history,
            files,
        }))
    }
    .await
    .map_err(TxError::into_store)
}

pub(crate) async fn finish_turn(
    conn: &mut Conn,
    finish: &FinishTurn,
) -> Result<Option<Ended>, StoreError> {
    super::transaction(conn, async |conn| finish_in(conn, finish).await)
        .await
        .map_err(TxError::into_store)
}

/// Ends a turn inside the caller's write transaction (see
/// `TaskStore::finish_turn`).
pub(super) async fn finish_in(
    conn: &mut Conn,
    finish: &FinishTurn,
) -> Result<Option<Ended>, TxError> {
    let ending = Ending::of(finish)?;
    let ended = ending.update().get_result(conn).await.optional()?;
    finish_ended(conn, finish, ended).await
}

/// What a turn's end writes on the turn's row.
pub(super) struct Ending<'a> {
    finish: &'a FinishTurn,
    /// The turn's usage as JSON.
    usage: Option<String>,
}

/// What the `UPDATE` that ends a turn returns: the turn, its own webhook's URL and
/// secrets, how many output batches its play recorded, and who else the end is
/// delivered to.
pub(super) type EndedRow = (TurnRow, Option<String>, Option<String>, i64, Recipients);

type EndedSql = (
    diesel::dsl::SqlTypeOf<diesel::dsl::AsSelect<TurnRow, Db>>,
    diesel::sql_types::Nullable<diesel::sql_types::Text>,
    diesel::sql_types::Nullable<diesel::sql_types::Text>,
    diesel::sql_types::BigInt,
    RecipientsSql,
);

impl<'a> Ending<'a> {
    pub(super) fn of(finish: &'a FinishTurn) -> Result<Self, TxError> {
        Ok(Ending {
            finish,
            usage: finish.usage.as_ref().map(crate::models::json).transpose()?,
        })
    }

    /// The `UPDATE` that ends the turn: only a running (or, for a cancel or a timeout,
    /// a waiting) turn can end, and only as its guard allows — late output for an
    /// ended turn is dropped, a lost lease cannot end a turn. No row when it may not.
    pub(super) fn update(
        &self,
    ) -> impl diesel::query_builder::Query<SqlType = EndedSql>
    + diesel::query_builder::QueryFragment<Db>
    + diesel::query_builder::QueryId
    + Send
    + '_ {
        let finish = self.finish;
        let (code, message) = match &finish.outcome {
            TurnOutcome::Failed(err) => (Some(err.code.as_str()), Some(err.message.as_str())),
            TurnOutcome::Completed
            | TurnOutcome::Cancelled
            | TurnOutcome::RequiresAction { .. } => (None, None),
        };
        let respond_by = match &finish.outcome {
            TurnOutcome::RequiresAction { respond_by } => Some(micros(*respond_by)),
            _ => None,
        };
        diesel::update(
            turns::table.filter(
                turns::id
                    .eq(finish.turn_id.0)
                    .and(guard_filter(&finish.guard)),
            ),
        )
        .set((
            turns::status.eq(finish.outcome.status().as_str()),
            turns::error_code.eq(code),
            turns::error_message.eq(message),
            turns::ended_at.eq(micros(finish.now)),
            turns::lease_owner.eq(None::<String>),
            turns::lease_expires_at.eq(None::<i64>),
            turns::usage.eq(self.usage.as_deref()),
            turns::respond_by.eq(respond_by),
        ))
        .returning((
            TurnRow::as_returning(),
            turns::webhook_url,
            turns::webhook_secrets,
            turns::output_batches,
            recipients(),
        ))
        .by_sql()
    }
}

/// The rest of a turn's end, after [`Ending::update`] answered `ended`: its output
/// stored, its delivery queued, its events logged, the task's queue handed on.
pub(super) async fn finish_ended(
    conn: &mut Conn,
    finish: &FinishTurn,
    ended: Option<EndedRow>,
) -> Result<Option<Ended>, TxError> {
    let now = micros(finish.now);
    let status = finish.outcome.status();
    let (task, turn) = (finish.task_id, finish.turn_id);
    let Some((ended, hook_url, hook_secrets, batches, recipients)) = ended else {
        return Ok(None);
    };
    // A running turn's play that recorded no batch has no output stored yet: all
    // of it comes with the end. (A turn waiting for tool answers stored its output
    // when it stopped to wait.)
    let played_now = matches!(
        finish.guard,
        LeaseGuard::Holder(_) | LeaseGuard::ExpiredBy(_)
    ) && batches == 0;
    // What the play had not recorded yet is stored with the end; the open
    // streamed message is closed.
    let applied = apply_output(
        conn,
        task,
        turn,
        &finish.output,
        finish.now,
        true,
        !played_now,
    )
    .await?;
    let mut drafts = applied.drafts;
    let output: Vec<Message> = match played_now {
        true => applied.messages,
        false => messages::table
            .filter(
                messages::turn_id
                    .eq(turn.0)
                    .and(messages::role.eq(Role::Assistant.as_str())),
            )
            .order(messages::id.asc())
            .select(MessageRow::as_select())
            .load(conn)
            .await?
            .into_iter()
            .map(MessageRow::into_domain)
            .collect::<Result<_, _>>()?,
    };
    let ended = ended.into_domain()?;
    let (kind, data) = baton_domain::events::turn_ended(&ended, &output);
    drafts.push(EventDraft {
        turn_id: turn,
        kind,
        data,
    });
    let own_hook = endpoint(hook_url, hook_secrets);
    queue_delivery(conn, &ended, own_hook, recipients, &output, now).await?;
    // The ending event, and whether messages wait in the task's queue: one statement.
    let queued = append_events(conn, task.0, drafts, now, Some(turn), Some(now)).await?;
    let next = match queued.unwrap_or(0) {
        0 => None,
        _ => {
            let idle = status != TurnStatus::RequiresAction;
            hand_on(conn, task, turn, idle, finish.next.as_ref(), finish.now).await?
        }
    };
    Ok(Some(Ended { next }))
}
