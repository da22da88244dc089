//! Messages of a turn, their attachments, and a turn's streamed text.

use baton_domain::*;
use chrono::{DateTime, Utc};
use diesel::prelude::*;
use diesel_async::RunQueryDsl;

use super::Conn;
use crate::models::*;
use crate::queries::TxError;
use crate::schema::{files, messages};
use crate::statement_cache::CacheBySql;

pub(super) async fn insert_message(
    conn: &mut Conn,
    task: TaskId,
    turn: TurnId,
    parts: MessageParts<'_>,
    streaming: Option<StreamingStatus>,
    at: DateTime<Utc>,
) -> Result<Message, TxError> {
    let content = store_attachments(conn, task, parts.content, at).await?;
    let row = NewMessageRow::new(
        task,
        turn,
        MessageParts {
            content: &content,
            ..parts
        },
        streaming,
        at,
    )?;
    let stored: MessageRow = diesel::insert_into(messages::table)
        .values(&row)
        .returning(MessageRow::as_returning())
        .by_sql()
        .get_result(conn)
        .await?;
    Ok(stored.into_domain()?)
}

/// Whether `content` brings attachment bytes to keep in `files`.
pub(super) fn keeps_files(content: &Content) -> bool {
    match content {
        Content::Text(text) => text.attachments.iter().any(|a| a.data.is_some()),
        _ => false,
    }
}

/// Keeps the bytes of the attachments sent with `content` in `files`; returns the
/// content as it is stored and shown: each attachment by its file id.
pub(super) async fn store_attachments(
    conn: &mut Conn,
    task: TaskId,
    content: &Content,
    at: DateTime<Utc>,
) -> Result<Content, TxError> {
    let Content::Text(text) = content else {
        return Ok(content.clone());
    };
    if !keeps_files(content) {
        return Ok(content.clone());
    }
    let mut stored = text.clone();
    for attachment in &mut stored.attachments {
        let Some(bytes) = attachment.decoded() else {
            continue;
        };
        let sha = attachment.stored(0, &bytes).sha256.unwrap_or_default();
        let id: i64 = diesel::insert_into(files::table)
            .values((
                files::task_id.eq(task.0),
                files::filename.eq(&attachment.filename),
                files::media_type.eq(&attachment.media_type),
                files::size_bytes.eq(bytes.len() as i64),
                files::sha256.eq(&sha),
                files::data.eq(&bytes),
                files::created_at.eq(micros(at)),
            ))
            .returning(files::id)
            .by_sql()
            .get_result(conn)
            .await?;
        *attachment = attachment.stored(id, &bytes);
    }
    Ok(Content::Text(stored))
}

/// The turn's open streamed text message, if it has one.
pub(super) async fn open_text(conn: &mut Conn, turn: TurnId) -> Result<Option<Message>, TxError> {
    let row: Option<MessageRow> = messages::table
        .filter(
            messages::turn_id
                .eq(turn.0)
                .and(messages::streaming_status.eq(StreamingStatus::InProgress.as_str())),
        )
        .select(MessageRow::as_select())
        .first(conn)
        .await
        .optional()?;
    Ok(row.map(MessageRow::into_domain).transpose()?)
}

/// Stores a streamed message's text so far, and closes it if `close`.
pub(super) async fn save_text(
    conn: &mut Conn,
    message: &mut Message,
    close: bool,
) -> Result<(), TxError> {
    if close {
        message.streaming_status = Some(StreamingStatus::Done);
    }
    diesel::update(messages::table.find(message.id.0))
        .set((
            messages::content.eq(content_json(&message.content)?),
            messages::streaming_status.eq(message.streaming_status.map(StreamingStatus::as_str)),
        ))
        .by_sql()
        .execute(conn)
        .await?;
    Ok(())
}

pub(super) fn message_event(message: &Message) -> EventDraft {
    EventDraft {
        turn_id: message.turn_id,
        kind: EventKind::Message,
        data: baton_domain::events::message(message),
    }
}
