//! Statement classification for automatic routing ([`Router::query`](super::Router::query),
//! [`Router::execute`](super::Router::execute)): is this SQL text safe to run on a
//! hot-standby replica?
//!
//! A small tokenizer (comments, string literals, quoted identifiers, dollar quotes)
//! feeds a handful of rules; there is no SQL parser. The rules only ever say
//! [`Class::Read`] for statements they recognise as read-only:
//!
//! - `SELECT`, `VALUES`, `TABLE x` and `WITH ... SELECT` (leading parentheses allowed),
//!   unless they contain a locking clause (`FOR UPDATE`, `FOR NO KEY UPDATE`,
//!   `FOR SHARE`, `FOR KEY SHARE`), `INTO` (`SELECT ... INTO t` creates a table), a
//!   data-modifying keyword anywhere (`INSERT`, `UPDATE`, `DELETE`, `MERGE`, e.g. in a
//!   CTE), or a call of a function on the deny list ([`DENIED_FUNCTIONS`],
//!   [`DENIED_FUNCTION_PREFIXES`]: sequences, advisory locks, large objects,
//!   `pg_notify`, `set_config`, transaction ids, dblink, ...);
//! - `SHOW`;
//! - `EXPLAIN` without `ANALYZE` (nothing runs); `EXPLAIN ANALYZE` is classified by
//!   the statement it runs.
//!
//! Everything else is [`Class::Write`] (goes to the master): every other command
//! (`BEGIN`, `SET`, `COPY`, `LOCK`, `CALL`, `DO`, `LISTEN`, DDL, ...), text the
//! tokenizer cannot finish (an unterminated literal or comment), text longer than
//! [`CLASSIFY_SCAN_BYTES_MAX`], and several statements of which any one is not a read.
//! A read misclassified as a write only costs the master some load; the rules are
//! biased that way (a column named `update` sends its query to the master).
//!
//! A plain `'...'` literal containing a backslash means different things with
//! `standard_conforming_strings` on (the default) and off; such text is classified
//! both ways and is a read only if both say so.
//!
//! User-defined functions are opaque: one that writes fails on a replica with SQLSTATE
//! 25006 (the statement did not run), and the router retries such a read once on the
//! master.
//!
//! ```
//! use switchyard_proxy::router::classify::{classify, Class};
//!
//! assert_eq!(classify("SELECT * FROM items WHERE id = $1"), Class::Read);
//! assert_eq!(classify("SELECT * FROM items FOR UPDATE"), Class::Write);
//! assert_eq!(classify("SELECT nextval('items_id_seq')"), Class::Write);
//! assert_eq!(classify("/* DELETE */ SELECT 'DELETE'"), Class::Read);
//! assert_eq!(classify("WITH d AS (DELETE FROM t RETURNING *) SELECT * FROM d"), Class::Write);
//! ```
//!
//! Invariant: classification never panics, allocates nothing, and scans at most
//! [`CLASSIFY_SCAN_BYTES_MAX`] bytes (twice for the backslash case); anything it does
//! not understand is a write.

/// Longest SQL text the classifier scans; longer text is classified [`Class::Write`]
/// without being scanned.
pub const CLASSIFY_SCAN_BYTES_MAX: usize = 64 * 1024;

/// Functions whose call makes a statement a write (compared case-insensitively,
/// schema qualification ignored): they change state, are session-bound (a replica's
/// session has no `currval`), or fail or act wrongly on a standby.
pub const DENIED_FUNCTIONS: &[&str] = &[
    "nextval",
    "setval",
    "currval",
    "lastval",
    "pg_notify",
    "set_config",
    "txid_current",
    "txid_current_if_assigned",
    "pg_current_xact_id",
    "pg_current_xact_id_if_assigned",
    "pg_current_wal_lsn",
    "pg_current_wal_insert_lsn",
    "pg_current_wal_flush_lsn",
    "pg_switch_wal",
    "pg_create_restore_point",
    "pg_create_physical_replication_slot",
    "pg_create_logical_replication_slot",
    "pg_copy_physical_replication_slot",
    "pg_copy_logical_replication_slot",
    "pg_drop_replication_slot",
    "pg_replication_slot_advance",
    "pg_logical_emit_message",
    "pg_cancel_backend",
    "pg_terminate_backend",
    "pg_reload_conf",
    "pg_rotate_logfile",
    "pg_promote",
    "pg_start_backup",
    "pg_stop_backup",
    "pg_backup_start",
    "pg_backup_stop",
    "pg_import_system_collations",
    "pg_log_backend_memory_contexts",
    "pg_sequence_last_value",
];

/// Prefixes of function names whose call makes a statement a write.
pub const DENIED_FUNCTION_PREFIXES: &[&str] = &[
    "pg_advisory",
    "pg_try_advisory",
    "lo_",
    "dblink",
    "pg_stat_reset",
    "pg_replication_origin",
    "pg_wal_replay_",
    "pg_file_",
    "pg_logical_slot_",
];

/// Where a statement may run.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Class {
    /// Read-only: a replica may run it.
    Read,
    /// Anything else: the master runs it.
    Write,
}

/// A classification with the rule that decided it (for logs and tests).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Classification {
    pub class: Class,
    pub reason: &'static str,
}

/// Classifies `sql`; see the [module docs](self).
pub fn classify(sql: &str) -> Class {
    classify_with_reason(sql).class
}

/// Classifies `sql` and says which rule decided it.
pub fn classify_with_reason(sql: &str) -> Classification {
    let verdict = if sql.len() > CLASSIFY_SCAN_BYTES_MAX {
        Err("longer than CLASSIFY_SCAN_BYTES_MAX")
    } else {
        match scan(sql.as_bytes(), true) {
            Ok(Scan {
                plain_backslash: true,
            }) => scan(sql.as_bytes(), false).map(|_| ()),
            Ok(_) => Ok(()),
            Err(e) => Err(e),
        }
    };
    match verdict {
        Ok(()) => Classification {
            class: Class::Read,
            reason: "read-only statement",
        },
        Err(reason) => Classification {
            class: Class::Write,
            reason,
        },
    }
}

type Verdict<T> = Result<T, &'static str>;

/// What a successful (all statements read-only) scan noticed.
struct Scan {
    /// A plain literal held a backslash: its meaning depends on
    /// `standard_conforming_strings`.
    plain_backslash: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Tok<'a> {
    /// An unquoted identifier or keyword.
    Word(&'a [u8]),
    /// A quoted identifier's raw content (between the quotes, `""` not undone).
    Quoted(&'a [u8]),
    /// A string literal, number, or positional parameter: a value.
    Literal,
    Open,
    Close,
    Semi,
    Dot,
    /// Any other operator or punctuation byte.
    Other,
}

/// A tokenizer over bytes. Copy, so lookahead is a copy of the position.
#[derive(Clone, Copy)]
struct Lexer<'a> {
    b: &'a [u8],
    i: usize,
    /// `standard_conforming_strings`: plain literals take no backslash escapes.
    scs: bool,
    plain_backslash: bool,
}

fn is_ident_start(c: u8) -> bool {
    c.is_ascii_alphabetic() || c == b'_' || c >= 0x80
}

fn is_ident_cont(c: u8) -> bool {
    is_ident_start(c) || c.is_ascii_digit() || c == b'$'
}

fn is_space(c: u8) -> bool {
    matches!(c, b' ' | b'\t' | b'\n' | b'\r' | 0x0b | 0x0c)
}

impl<'a> Lexer<'a> {
    fn new(b: &'a [u8], scs: bool) -> Self {
        Lexer {
            b,
            i: 0,
            scs,
            plain_backslash: false,
        }
    }

    fn at(&self, i: usize) -> Option<u8> {
        self.b.get(i).copied()
    }

    /// Skips whitespace and comments.
    fn skip_trivia(&mut self) -> Verdict<()> {
        loop {
            match (self.at(self.i), self.at(self.i + 1)) {
                (Some(c), _) if is_space(c) => self.i += 1,
                (Some(b'-'), Some(b'-')) => {
                    while let Some(c) = self.at(self.i) {
                        if c == b'\n' || c == b'\r' {
                            break;
                        }
                        self.i += 1;
                    }
                }
                (Some(b'/'), Some(b'*')) => {
                    // Nested, as PostgreSQL's.
                    self.i += 2;
                    let mut depth = 1usize;
                    while depth > 0 {
                        match (self.at(self.i), self.at(self.i + 1)) {
                            (None, _) => return Err("unterminated comment"),
                            (Some(b'/'), Some(b'*')) => {
                                depth += 1;
                                self.i += 2;
                            }
                            (Some(b'*'), Some(b'/')) => {
                                depth -= 1;
                                self.i += 2;
                            }
                            _ => self.i += 1,
                        }
                    }
                }
                _ => return Ok(()),
            }
        }
    }

    /// A `'...'` literal starting at the quote; `backslash`: backslash escapes (E'').
    fn string(&mut self, backslash: bool, plain: bool) -> Verdict<Tok<'a>> {
        self.i += 1; // the opening quote
        loop {
            match self.at(self.i) {
                None => return Err("unterminated string literal"),
                Some(b'\'') => {
                    if self.at(self.i + 1) == Some(b'\'') {
                        self.i += 2;
                    } else {
                        self.i += 1;
                        return Ok(Tok::Literal);
                    }
                }
                Some(b'\\') => {
                    if plain {
                        self.plain_backslash = true;
                    }
                    self.i += if backslash { 2 } else { 1 };
                }
                Some(_) => self.i += 1,
            }
        }
    }

    /// A `"..."` identifier starting at the quote.
    fn quoted(&mut self) -> Verdict<Tok<'a>> {
        let start = self.i + 1;
        self.i = start;
        loop {
            match self.at(self.i) {
                None => return Err("unterminated quoted identifier"),
                Some(b'"') if self.at(self.i + 1) == Some(b'"') => self.i += 2,
                Some(b'"') => {
                    let content = self.b.get(start..self.i).unwrap_or_default();
                    self.i += 1;
                    return Ok(Tok::Quoted(content));
                }
                Some(_) => self.i += 1,
            }
        }
    }

    /// At a `$`: a positional parameter, a dollar-quoted literal, or an operator byte.
    fn dollar(&mut self) -> Verdict<Tok<'a>> {
        let start = self.i;
        let mut j = start + 1;
        match self.at(j) {
            Some(c) if c.is_ascii_digit() => {
                while self.at(j).is_some_and(|c| c.is_ascii_digit()) {
                    j += 1;
                }
                self.i = j;
                return Ok(Tok::Literal);
            }
            Some(c) if is_ident_start(c) => {
                while self
                    .at(j)
                    .is_some_and(|c| is_ident_start(c) || c.is_ascii_digit())
                {
                    j += 1;
                }
            }
            _ => {}
        }
        if self.at(j) != Some(b'$') {
            self.i = start + 1;
            return Ok(Tok::Other);
        }
        let tag = self.b.get(start..=j).unwrap_or_default();
        let body = j + 1;
        let rest = self.b.get(body..).unwrap_or_default();
        match rest.windows(tag.len()).position(|w| w == tag) {
            Some(p) => {
                self.i = body + p + tag.len();
                Ok(Tok::Literal)
            }
            None => Err("unterminated dollar-quoted literal"),
        }
    }

    fn number(&mut self) -> Tok<'a> {
        while let Some(c) = self.at(self.i) {
            if c.is_ascii_digit() || c == b'.' || c == b'_' {
                self.i += 1;
            } else if (c == b'e' || c == b'E')
                && (self.at(self.i + 1).is_some_and(|d| d.is_ascii_digit())
                    || (matches!(self.at(self.i + 1), Some(b'+' | b'-'))
                        && self.at(self.i + 2).is_some_and(|d| d.is_ascii_digit())))
            {
                self.i += 2;
            } else {
                break;
            }
        }
        Tok::Literal
    }

    /// The next token, or None at the end of the text.
    fn next(&mut self) -> Verdict<Option<Tok<'a>>> {
        self.skip_trivia()?;
        let Some(c) = self.at(self.i) else {
            return Ok(None);
        };
        let n1 = self.at(self.i + 1);
        let tok = match c {
            b'\'' => self.string(!self.scs, true)?,
            b'"' => self.quoted()?,
            b'$' => self.dollar()?,
            b'(' => {
                self.i += 1;
                Tok::Open
            }
            b')' => {
                self.i += 1;
                Tok::Close
            }
            b';' => {
                self.i += 1;
                Tok::Semi
            }
            b'.' if !n1.is_some_and(|d| d.is_ascii_digit()) => {
                self.i += 1;
                Tok::Dot
            }
            b'0'..=b'9' | b'.' => self.number(),
            // E'..': backslash escapes whatever standard_conforming_strings says.
            b'e' | b'E' if n1 == Some(b'\'') => {
                self.i += 1;
                self.string(true, false)?
            }
            // Bit strings, hex strings, national strings.
            b'b' | b'B' | b'x' | b'X' | b'n' | b'N' if n1 == Some(b'\'') => {
                self.i += 1;
                self.string(!self.scs, true)?
            }
            // U&'..' and U&"..": the backslash is a Unicode escape, not a quote escape.
            b'u' | b'U'
                if n1 == Some(b'&') && matches!(self.at(self.i + 2), Some(b'\'' | b'"')) =>
            {
                self.i += 2;
                if self.at(self.i) == Some(b'\'') {
                    self.string(false, false)?
                } else {
                    match self.quoted()? {
                        // An escaped name could spell anything: do not trust it.
                        Tok::Quoted(q) if q.contains(&b'\\') => {
                            return Err("Unicode-escaped identifier")
                        }
                        t => t,
                    }
                }
            }
            c if is_ident_start(c) => {
                let start = self.i;
                while self.at(self.i).is_some_and(is_ident_cont) {
                    self.i += 1;
                }
                Tok::Word(self.b.get(start..self.i).unwrap_or_default())
            }
            _ => {
                self.i += 1;
                Tok::Other
            }
        };
        Ok(Some(tok))
    }

    fn peek(&self) -> Verdict<Option<Tok<'a>>> {
        let mut copy = *self;
        copy.next()
    }
}

fn is_kw(tok: Option<Tok<'_>>, kw: &str) -> bool {
    matches!(tok, Some(Tok::Word(w)) if w.eq_ignore_ascii_case(kw.as_bytes()))
}

fn word_is(w: &[u8], kw: &str) -> bool {
    w.eq_ignore_ascii_case(kw.as_bytes())
}

/// Whether calling `name` (an unquoted name, case-insensitive) is denied.
fn denied_function(name: &[u8], case_insensitive: bool) -> bool {
    let eq = |a: &[u8], b: &[u8]| {
        if case_insensitive {
            a.eq_ignore_ascii_case(b)
        } else {
            a == b
        }
    };
    DENIED_FUNCTIONS.iter().any(|f| eq(name, f.as_bytes()))
        || DENIED_FUNCTION_PREFIXES.iter().any(|p| {
            name.len() >= p.len() && eq(name.get(..p.len()).unwrap_or_default(), p.as_bytes())
        })
}

/// Scans every statement; Ok if all are read-only.
fn scan(sql: &[u8], scs: bool) -> Verdict<Scan> {
    let mut lx = Lexer::new(sql, scs);
    loop {
        match statement(&mut lx, false)? {
            End::Semi => {}
            End::Eof => {
                return Ok(Scan {
                    plain_backslash: lx.plain_backslash,
                })
            }
        }
    }
}

enum End {
    Semi,
    Eof,
}

/// Classifies one statement, consuming it through its `;` (or the end). Ok: read-only.
fn statement(lx: &mut Lexer<'_>, in_explain: bool) -> Verdict<End> {
    // Leading parentheses: `(SELECT 1) UNION (SELECT 2)`.
    let first = loop {
        match lx.next()? {
            None => return Ok(End::Eof),
            Some(Tok::Semi) if !in_explain => return Ok(End::Semi),
            Some(Tok::Open) => {}
            Some(t) => break t,
        }
    };
    let Tok::Word(w) = first else {
        return Err("does not start with a keyword");
    };
    if ["select", "values", "table", "with"]
        .iter()
        .any(|k| word_is(w, k))
    {
        query_body(lx)
    } else if word_is(w, "show") && !in_explain {
        skip_statement(lx)
    } else if word_is(w, "explain") && !in_explain {
        explain(lx)
    } else {
        Err("not a read-only command")
    }
}

/// After `EXPLAIN`: its options, then the statement. Without ANALYZE nothing runs.
fn explain(lx: &mut Lexer<'_>) -> Verdict<End> {
    let mut analyze = false;
    loop {
        let t = lx.peek()?;
        if is_kw(t, "analyze") || is_kw(t, "analyse") {
            analyze = true;
            lx.next()?;
        } else if is_kw(t, "verbose") {
            lx.next()?;
        } else if t == Some(Tok::Open) {
            // `EXPLAIN (options) stmt` or `EXPLAIN (SELECT ...)`.
            let mut after = *lx;
            after.next()?;
            let inner = after.peek()?;
            if inner == Some(Tok::Open)
                || ["select", "values", "table", "with"]
                    .iter()
                    .any(|k| is_kw(inner, k))
            {
                break;
            }
            lx.next()?;
            let mut depth = 1usize;
            while depth > 0 {
                match lx.next()? {
                    None | Some(Tok::Semi) => return Err("unterminated EXPLAIN options"),
                    Some(Tok::Open) => depth += 1,
                    Some(Tok::Close) => depth -= 1,
                    // Any mention, even `ANALYZE false`: classify what it would run.
                    Some(Tok::Word(w)) if word_is(w, "analyze") || word_is(w, "analyse") => {
                        analyze = true
                    }
                    Some(_) => {}
                }
            }
        } else {
            break;
        }
    }
    if analyze {
        statement(lx, true)
    } else {
        skip_statement(lx)
    }
}

/// Consumes the rest of a statement (still tokenizing, so a `;` inside a literal does
/// not end it and unterminated text is caught).
fn skip_statement(lx: &mut Lexer<'_>) -> Verdict<End> {
    loop {
        match lx.next()? {
            None => return Ok(End::Eof),
            Some(Tok::Semi) => return Ok(End::Semi),
            Some(_) => {}
        }
    }
}

/// The rest of a SELECT / VALUES / TABLE / WITH statement.
fn query_body(lx: &mut Lexer<'_>) -> Verdict<End> {
    let mut prev: Option<Tok<'_>> = None;
    loop {
        let Some(tok) = lx.next()? else {
            return Ok(End::Eof);
        };
        match tok {
            Tok::Semi => return Ok(End::Semi),
            Tok::Word(w) => {
                let next = lx.peek()?;
                if next == Some(Tok::Open) && denied_function(w, true) {
                    return Err("calls a function with side effects");
                }
                // After a dot it is a column or table name, not a keyword.
                if prev != Some(Tok::Dot) {
                    if word_is(w, "into") {
                        return Err("SELECT ... INTO creates a table");
                    }
                    if ["insert", "update", "delete", "merge"]
                        .iter()
                        .any(|k| word_is(w, k))
                    {
                        return Err("data-modifying statement inside");
                    }
                    if word_is(w, "for")
                        && ["update", "share", "no", "key"]
                            .iter()
                            .any(|k| is_kw(next, k))
                    {
                        return Err("locking clause");
                    }
                }
            }
            Tok::Quoted(q) if lx.peek()? == Some(Tok::Open) && denied_function(q, false) => {
                return Err("calls a function with side effects");
            }
            _ => {}
        }
        prev = Some(tok);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[track_caller]
    fn read(sql: &str) {
        let c = classify_with_reason(sql);
        assert_eq!(c.class, Class::Read, "{sql:?}: {}", c.reason);
    }

    #[track_caller]
    fn write(sql: &str) {
        let c = classify_with_reason(sql);
        assert_eq!(c.class, Class::Write, "{sql:?} classified as a read");
    }

    #[test]
    fn plain_reads() {
        for sql in [
            "SELECT 1",
            "select 1",
            "SeLeCt 1",
            "SELECT * FROM t WHERE id = $1",
            "SELECT a, b FROM t JOIN u USING (id) WHERE x > 3 ORDER BY a LIMIT 10",
            "SELECT count(*) FROM t GROUP BY a HAVING count(*) > 1",
            "SELECT 1 UNION ALL SELECT 2",
            "(SELECT 1) UNION (SELECT 2)",
            "((SELECT 1))",
            "VALUES (1, 'a'), (2, 'b')",
            "TABLE items",
            "TABLE public.items",
            "SHOW search_path",
            "SHOW ALL",
            "  \n\tSELECT 1  ",
            "SELECT 1;",
            "SELECT 1; SELECT 2;",
            ";;SELECT 1;;",
            "SELECT now(), random(), pg_sleep(0)",
            "SELECT pg_is_in_recovery(), pg_last_wal_replay_lsn()",
            "SELECT * FROM generate_series(1, 10)",
            "SELECT x FROM t WHERE x IN (SELECT y FROM u)",
            "SELECT EXISTS (SELECT 1 FROM t)",
            "SELECT 1.5e10, .5, 1e-3, 0x1F",
            "SELECT a::text FROM t",
            "SELECT substring('abc' FROM 1 FOR 2)",
            "SELECT * FROM t WINDOW w AS (PARTITION BY a)",
            "SELECT $1::int + $2",
        ] {
            read(sql);
        }
    }

    #[test]
    fn with_queries() {
        read("WITH x AS (SELECT 1 AS a) SELECT a FROM x");
        read("WITH RECURSIVE r(n) AS (SELECT 1 UNION ALL SELECT n + 1 FROM r WHERE n < 5) SELECT * FROM r");
        read("WITH x AS MATERIALIZED (SELECT 1) SELECT * FROM x");
        write("WITH x AS (DELETE FROM t RETURNING *) SELECT * FROM x");
        write("WITH x AS (UPDATE t SET a = 1 RETURNING *) SELECT * FROM x");
        write("WITH x AS (INSERT INTO t VALUES (1) RETURNING *) SELECT * FROM x");
        write(
            "with x as (merge into t using u on t.id = u.id when matched then do nothing) select 1",
        );
        write("WITH x AS (SELECT 1) INSERT INTO t SELECT * FROM x");
        write("WITH x AS (SELECT 1) UPDATE t SET a = 1");
        write("WITH x AS (SELECT 1) DELETE FROM t");
        write("WITH x AS (SELECT * FROM t) SELECT * FROM x FOR UPDATE");
    }

    #[test]
    fn locking_clauses() {
        write("SELECT * FROM t FOR UPDATE");
        write("SELECT * FROM t FOR NO KEY UPDATE");
        write("SELECT * FROM t FOR SHARE");
        write("SELECT * FROM t FOR KEY SHARE");
        write("SELECT * FROM t for update of t nowait");
        write("SELECT * FROM t FOR UPDATE SKIP LOCKED");
        write("SELECT * FROM (SELECT * FROM t FOR UPDATE) s");
        write("SELECT * FROM t LIMIT 1 FOR\n  -- comment\n  UPDATE");
        write("SELECT * FROM t LIMIT 1FOR UPDATE");
        write("SELECT * FROM t FOR/**/SHARE");
    }

    #[test]
    fn into_and_functions() {
        write("SELECT * INTO new_t FROM t");
        write("SELECT a INTO TEMP x FROM t");
        write("SELECT nextval('s')");
        write("SELECT NEXTVAL('s')");
        write("SELECT pg_catalog.nextval('s')");
        write("SELECT \"nextval\"('s')");
        write("SELECT setval('s', 10)");
        write("SELECT currval('s')");
        write("SELECT lastval()");
        write("SELECT pg_advisory_lock(1)");
        write("SELECT pg_advisory_xact_lock(1)");
        write("SELECT pg_try_advisory_lock(1)");
        write("SELECT lo_import('/tmp/x')");
        write("SELECT lo_unlink(42)");
        write("SELECT pg_notify('ch', 'msg')");
        write("SELECT set_config('a.b', 'c', false)");
        write("SELECT txid_current()");
        write("SELECT pg_current_xact_id()");
        write("SELECT pg_current_wal_lsn()");
        write("SELECT * FROM dblink('host=x', 'DELETE FROM t') AS t(a int)");
        write("SELECT dblink_exec('DELETE FROM t')");
        write("VALUES (nextval('s'))");
        write("SELECT pg_terminate_backend(123)");
        write("SELECT nextval ('s')");
        write("SELECT nextval/* x */('s')");
        // Names that only look like denied ones.
        read("SELECT nextval_count FROM t");
        read("SELECT \"NEXTVAL\"('s')"); // a different (user) function; fails harmlessly
        read("SELECT s.nextval FROM s");
        read("SELECT lo FROM t");
        read("SELECT pg_advisory FROM t");
        read("SELECT 'nextval(1)'");
        // Quoted keywords are identifiers.
        read("SELECT \"update\", \"delete\" FROM t");
        read("SELECT t.update FROM t");
        read("SELECT \"into\" FROM t");
        write("SELECT update FROM t"); // an unquoted keyword as a column: master, harmless
    }

    #[test]
    fn comments_and_literals() {
        read("/* DELETE FROM t */ SELECT 1");
        read("-- DELETE FROM t\nSELECT 1");
        read("SELECT 1 -- FOR UPDATE");
        read("SELECT 1 /* FOR UPDATE */");
        read("/* outer /* nested DELETE */ still comment */ SELECT 1");
        read("SELECT 'DELETE FROM t'");
        read("SELECT 'it''s; DELETE FROM t'");
        read("SELECT E'it\\'s; DELETE FROM t'");
        read("SELECT e'\\\\' FROM t");
        read("SELECT $$DELETE FROM t; $$");
        read("SELECT $tag$ ; DELETE $$ FOR UPDATE $tag$");
        read("SELECT $a$x$a$, $1");
        read("SELECT \"weird;name\" FROM \"FOR UPDATE\"");
        read("SELECT \"a\"\"b\" FROM t");
        read("SELECT U&'d\\0061t\\+000061' FROM t");
        read("SELECT B'1010', X'1F', N'text'");
        read("SELECT a$b FROM t");
        read("SELECT 'x' /* ; DELETE */ ; SELECT 'y'");
        write("/* SELECT */ DELETE FROM t");
        write("-- SELECT 1\nDELETE FROM t");
        write("SELECT 1 /* unterminated");
        write("SELECT 'unterminated");
        write("SELECT \"unterminated");
        write("SELECT $$unterminated");
        write("SELECT $a$ x $b$");
        write("SELECT E'unterminated\\'");
        write("/* /* nested */ unterminated SELECT 1");
        write("SELECT 1 -- comment\n; DELETE FROM t");
        write("SELECT U&\"\\006eextval\"('s')");
    }

    #[test]
    fn more_tricky_ones() {
        write("SELECT \"pg_catalog\".\"nextval\"('s')");
        write("SELECT pg_catalog . nextval ('s')");
        write("SELECT * FROM pg_advisory_lock(1)");
        write("SELECT pg_advisory_unlock_all()");
        write("SELECT 1 FROM t FOR SHARE OF t");
        write("SELECT x FROM t ORDER BY x FOR KEY SHARE SKIP LOCKED");
        read("SELECT nextval FROM (VALUES (1)) v(nextval)");
        read("SELECT txid_current_snapshot(), pg_current_snapshot()");
        read("-- /* not a block comment\nSELECT 1");
        read("/* -- not a line comment */ SELECT 1");
        read("WITH t AS (SELECT 1) TABLE t");
        read("SELECT * FROM t ORDER BY a FETCH FIRST 1 ROWS ONLY");
        read("SELECT $_$ DELETE $_$");
        read("SELECT a$$b FROM t");
        read("SELECT * FROM t WHERE x = ANY($1) AND y @> $2");
        read("SELECT 'a'\n'b'");
        write("SHOW x; SET y = 1");
        write("EXPLAIN ANALYZE WITH d AS (DELETE FROM t RETURNING 1) SELECT * FROM d");
    }

    #[test]
    fn backslash_literals_need_both_readings() {
        // With standard_conforming_strings on: 'x\' is a string, then a second one.
        // With it off, everything through the second quote is one string and the
        // DELETE is a statement: both readings must agree on read.
        write("SELECT 'x\\' , ' ; DELETE FROM t; -- '");
        read("SELECT 'C:\\path' FROM t");
        read("SELECT '\\d+' ~ 'abc'");
    }

    #[test]
    fn explain() {
        read("EXPLAIN SELECT * FROM t");
        read("EXPLAIN DELETE FROM t"); // plans only
        read("EXPLAIN VERBOSE UPDATE t SET a = 1");
        read("EXPLAIN (FORMAT JSON) DELETE FROM t");
        read("EXPLAIN (COSTS OFF, FORMAT TEXT) SELECT 1");
        read("EXPLAIN ANALYZE SELECT * FROM t");
        read("EXPLAIN (ANALYZE, BUFFERS) SELECT 1");
        read("EXPLAIN (SELECT 1)");
        read("explain analyse select 1");
        write("EXPLAIN ANALYZE DELETE FROM t");
        write("EXPLAIN ANALYSE UPDATE t SET a = 1");
        write("EXPLAIN ANALYZE VERBOSE INSERT INTO t VALUES (1)");
        write("EXPLAIN (ANALYZE) DELETE FROM t");
        write("EXPLAIN (ANALYZE true, FORMAT JSON) DELETE FROM t");
        write("EXPLAIN (FORMAT JSON, ANALYZE) INSERT INTO t VALUES (1)");
        write("EXPLAIN ANALYZE SELECT nextval('s')");
        write("EXPLAIN ANALYZE SELECT * FROM t FOR UPDATE");
        write("EXPLAIN (ANALYZE");
        write("EXPLAIN ANALYZE EXPLAIN SELECT 1");
        write("EXPLAIN ANALYZE SHOW x");
        write("EXPLAIN SELECT 1; DELETE FROM t");
    }

    #[test]
    fn other_commands_go_to_the_master() {
        for sql in [
            "INSERT INTO t VALUES (1)",
            "UPDATE t SET a = 1",
            "DELETE FROM t",
            "MERGE INTO t USING u ON t.id = u.id WHEN MATCHED THEN DELETE",
            "BEGIN",
            "BEGIN READ ONLY",
            "START TRANSACTION",
            "COMMIT",
            "ROLLBACK",
            "SET search_path = x",
            "SET LOCAL statement_timeout = 0",
            "RESET ALL",
            "COPY t TO STDOUT",
            "COPY t FROM STDIN",
            "COPY (SELECT 1) TO STDOUT",
            "LOCK TABLE t",
            "CALL p()",
            "DO $$BEGIN PERFORM 1; END$$",
            "LISTEN ch",
            "NOTIFY ch",
            "UNLISTEN *",
            "CREATE TABLE t (a int)",
            "CREATE TABLE t AS SELECT 1",
            "DROP TABLE t",
            "ALTER TABLE t ADD b int",
            "TRUNCATE t",
            "VACUUM t",
            "ANALYZE t",
            "REFRESH MATERIALIZED VIEW v",
            "PREPARE p AS SELECT 1",
            "EXECUTE p",
            "DECLARE c CURSOR FOR SELECT 1",
            "FETCH 1 FROM c",
            "DISCARD ALL",
            "GRANT SELECT ON t TO u",
            "SELECT 1; INSERT INTO t VALUES (1)",
            "INSERT INTO t VALUES (1); SELECT 1",
            "(INSERT INTO t VALUES (1))",
            "",
            "   ",
            "-- only a comment",
            "42",
            "'SELECT'",
            "\"SELECT\" 1",
            "$1",
            "SEL/**/ECT 1",
            "❤ SELECT 1",
        ] {
            if sql.trim().is_empty() || sql.starts_with("--") {
                // Nothing to run: a read (no statement can modify anything).
                read(sql);
            } else {
                write(sql);
            }
        }
    }

    #[test]
    fn length_bound() {
        let mut sql = String::from("SELECT 1");
        sql.push_str(&" ".repeat(CLASSIFY_SCAN_BYTES_MAX - sql.len()));
        read(&sql);
        sql.push(' ');
        assert_eq!(
            classify_with_reason(&sql).reason,
            "longer than CLASSIFY_SCAN_BYTES_MAX"
        );
    }

    #[test]
    fn non_ascii() {
        read("SELECT 'héllo', \"naïve\" FROM tâble");
        read("SELECT ünïcode FROM t -- ❤");
        write("SELECT 1 FOR UPDATE -- ❤");
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(512))]

        #[test]
        fn never_panics_on_any_string(s in ".{0,300}") {
            let _ = classify(&s);
        }

        #[test]
        fn never_panics_on_sql_like_text(
            parts in proptest::collection::vec(prop_oneof![
                Just("SELECT"), Just("select"), Just("FOR"), Just("UPDATE"), Just("("),
                Just(")"), Just("'"), Just("''"), Just("E'"), Just("\\"), Just("\""),
                Just("$$"), Just("$a$"), Just("$1"), Just("--"), Just("/*"), Just("*/"),
                Just(";"), Just("\n"), Just(" "), Just("EXPLAIN"), Just("ANALYZE"),
                Just("nextval"), Just("."), Just("U&"), Just("1e"), Just("x"),
                Just("WITH"), Just("DELETE"), Just("INTO"), Just("é"),
            ], 0..40)
        ) {
            let sql: String = parts.concat();
            let _ = classify(&sql);
        }

        /// Anything followed by a write is a write (a trailing DELETE can never hide).
        #[test]
        fn a_write_statement_is_never_hidden_by_a_read_prefix(prefix in "SELECT [a-z0-9 ,()]{0,40}") {
            let sql = format!("{prefix}; DELETE FROM t");
            prop_assert_eq!(classify(&sql), Class::Write);
        }
    }
}
