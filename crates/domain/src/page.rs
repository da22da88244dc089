//! Cursor pagination shared by every listing.

/// Largest page a client may ask for.
pub const MAX_PAGE_SIZE: u32 = 100;
/// Page size when the client names none.
pub const DEFAULT_PAGE_SIZE: u32 = 20;

/// Which page to read: up to `limit` items strictly after the `after` cursor, in the
/// listing's order (newest first for tasks, oldest first for messages).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PageRequest {
    pub limit: u32,
    pub after: Option<i64>,
}

impl Default for PageRequest {
    fn default() -> Self {
        PageRequest {
            limit: DEFAULT_PAGE_SIZE,
            after: None,
        }
    }
}

/// One page of a listing and the cursor to the next one, if there is one.
#[derive(Debug, Clone, PartialEq)]
pub struct Page<T> {
    pub items: Vec<T>,
    pub next_after: Option<i64>,
}

impl<T> Page<T> {
    /// Builds a page from up to `limit + 1` rows read in listing order: the extra row,
    /// if present, only says that another page exists.
    pub fn from_overfetch(mut rows: Vec<T>, limit: u32, key: impl Fn(&T) -> i64) -> Self {
        let limit = limit as usize;
        let has_more = rows.len() > limit;
        rows.truncate(limit);
        let next_after = if has_more {
            rows.last().map(&key)
        } else {
            None
        };
        Page {
            items: rows,
            next_after,
        }
    }

    pub fn map<U>(self, f: impl FnMut(T) -> U) -> Page<U> {
        Page {
            items: self.items.into_iter().map(f).collect(),
            next_after: self.next_after,
        }
    }
}

/// A page of a task's history, and the id of the task's last event as of the same
/// read: the page shows every event up to it (a streamed message's text included) and
/// none after, so following the stream after it continues the page with nothing
/// missing and nothing twice.
#[derive(Debug, Clone, PartialEq)]
pub struct History<T> {
    pub page: Page<T>,
    pub last_event_id: i64,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn overfetched_row_yields_a_cursor_and_is_dropped() {
        let page = Page::from_overfetch(vec![5, 4, 3], 2, |v| *v);
        assert_eq!(page.items, vec![5, 4]);
        assert_eq!(page.next_after, Some(4));
    }

    #[test]
    fn last_page_has_no_cursor() {
        let page = Page::from_overfetch(vec![5, 4], 2, |v| *v);
        assert_eq!(page.items, vec![5, 4]);
        assert_eq!(page.next_after, None);
    }
}
