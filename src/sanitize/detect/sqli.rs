//! SQL injection: a SQL tokenizer (strings, numbers, keywords, function calls, operators,
//! comments, variables) run in three contexts — as is, and as if the value were placed
//! inside a `'…'` or `"…"` literal (the string-break context) — then grammar rules over
//! the token sequence. One keyword in English text never fires: every rule needs a
//! structure (keyword + expression, logic operator + comparison, string break + SQL
//! continuation, statement after `;`, …).

/// Token class.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum T {
    /// String literal; `closed` when its closing quote was seen.
    Str {
        closed: bool,
    },
    Num,
    /// Plain word (identifier or unclassified English word).
    Word,
    /// SQL keyword.
    Kw(K),
    /// `name(` (the name's keyword class, `K::None` when unknown).
    Func(F),
    /// AND, OR, XOR, NOT, &&, ||
    Logic,
    /// =, ==, <, >, <=, >=, <>, !=, <=>, LIKE, RLIKE, REGEXP, SOUNDS
    Cmp,
    /// Arithmetic or other operator.
    Op,
    LParen,
    RParen,
    Comma,
    Semi,
    /// `--`, `#`, `/* */` comment.
    Comment,
    /// `@var`, `@@var`, `:var`.
    Var,
    Star,
}

/// Keyword classes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum K {
    Select,
    Union,
    All,
    From,
    Where,
    Insert,
    Into,
    Update,
    Set,
    Delete,
    Drop,
    Table,
    Exec,
    Declare,
    Waitfor,
    Delay,
    Order,
    Group,
    By,
    Having,
    Limit,
    Case,
    When,
    Then,
    Else,
    End,
    Null,
    As,
    In,
    Is,
    Between,
    Procedure,
    Begin,
    Shutdown,
    Create,
    Alter,
    Truncate,
    If,
    True,
    Top,
    Values,
    Exists,
    Outfile,
}

/// Function classes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum F {
    /// Time-based blind functions (sleep, benchmark, pg_sleep, receive_message, …).
    Time,
    /// Functions characteristic of SQL (cast, concat, char, extractvalue, …).
    Sql,
    /// Anything else.
    Other,
}

#[derive(Debug, Clone, Copy)]
struct Tok {
    t: T,
    start: usize,
    end: usize,
}

/// Packs a word of at most 8 bytes into an integer (little-endian, zero padded).
const fn pack(w: &str) -> u64 {
    let b = w.as_bytes();
    let mut v = 0u64;
    let mut i = 0;
    while i < b.len() {
        v |= (b[i] as u64) << (8 * i);
        i += 1;
    }
    v
}

/// [`pack`] of a byte string of at most 8 bytes.
const fn pack_bytes(b: &[u8]) -> u64 {
    let mut v = 0u64;
    let mut i = 0;
    while i < b.len() && i < 8 {
        v |= (b[i] as u64) << (8 * i);
        i += 1;
    }
    v
}

const KW_SELECT: u64 = pack("select");
const KW_UNION: u64 = pack("union");
const KW_ALL: u64 = pack("all");
const KW_DISTINCT: u64 = pack("distinct");
const KW_FROM: u64 = pack("from");
const KW_WHERE: u64 = pack("where");
const KW_INSERT: u64 = pack("insert");
const KW_INTO: u64 = pack("into");
const KW_UPDATE: u64 = pack("update");
const KW_SET: u64 = pack("set");
const KW_DELETE: u64 = pack("delete");
const KW_DROP: u64 = pack("drop");
const KW_TABLE: u64 = pack("table");
const KW_DATABASE: u64 = pack("database");
const KW_SCHEMA: u64 = pack("schema");
const KW_USER: u64 = pack("user");
const KW_VIEW: u64 = pack("view");
const KW_EXEC: u64 = pack("exec");
const KW_EXECUTE: u64 = pack("execute");
const KW_CALL: u64 = pack("call");
const KW_DECLARE: u64 = pack("declare");
const KW_WAITFOR: u64 = pack("waitfor");
const KW_DELAY: u64 = pack("delay");
const KW_TIME: u64 = pack("time");
const KW_ORDER: u64 = pack("order");
const KW_GROUP: u64 = pack("group");
const KW_BY: u64 = pack("by");
const KW_HAVING: u64 = pack("having");
const KW_LIMIT: u64 = pack("limit");
const KW_OFFSET: u64 = pack("offset");
const KW_CASE: u64 = pack("case");
const KW_WHEN: u64 = pack("when");
const KW_THEN: u64 = pack("then");
const KW_ELSE: u64 = pack("else");
const KW_END: u64 = pack("end");
const KW_NULL: u64 = pack("null");
const KW_AS: u64 = pack("as");
const KW_IN: u64 = pack("in");
const KW_IS: u64 = pack("is");
const KW_BETWEEN: u64 = pack("between");
const KW_BEGIN: u64 = pack("begin");
const KW_SHUTDOWN: u64 = pack("shutdown");
const KW_CREATE: u64 = pack("create");
const KW_ALTER: u64 = pack("alter");
const KW_TRUNCATE: u64 = pack("truncate");
const KW_IF: u64 = pack("if");
const KW_TRUE: u64 = pack("true");
const KW_FALSE: u64 = pack("false");
const KW_TOP: u64 = pack("top");
const KW_VALUES: u64 = pack("values");
const KW_EXISTS: u64 = pack("exists");
const KW_OUTFILE: u64 = pack("outfile");
const KW_DUMPFILE: u64 = pack("dumpfile");
const KW_AND: u64 = pack("and");
const KW_OR: u64 = pack("or");
const KW_XOR: u64 = pack("xor");
const KW_NOT: u64 = pack("not");
const KW_DIV: u64 = pack("div");
const KW_LIKE: u64 = pack("like");
const KW_RLIKE: u64 = pack("rlike");
const KW_REGEXP: u64 = pack("regexp");
const KW_SOUNDS: u64 = pack("sounds");
const KW_GLOB: u64 = pack("glob");

fn keyword(w: &str) -> Option<T> {
    // `w` is lowercase ASCII. Words of up to 8 bytes are matched as one integer.
    if w.len() <= 8 {
        return keyword_packed(pack_bytes(w.as_bytes()));
    }
    match w {
        "procedure_" => Some(T::Kw(K::Table)),
        "xp_cmdshell" | "sp_executesql" => Some(T::Kw(K::Exec)),
        "procedure" => Some(T::Kw(K::Procedure)),
        _ => None,
    }
}

/// [`keyword`] of a word of at most 8 bytes, lowercase and packed ([`pack`]).
fn keyword_packed(packed: u64) -> Option<T> {
    match packed {
        KW_SELECT => Some(T::Kw(K::Select)),
        KW_UNION => Some(T::Kw(K::Union)),
        KW_ALL | KW_DISTINCT => Some(T::Kw(K::All)),
        KW_FROM => Some(T::Kw(K::From)),
        KW_WHERE => Some(T::Kw(K::Where)),
        KW_INSERT => Some(T::Kw(K::Insert)),
        KW_INTO => Some(T::Kw(K::Into)),
        KW_UPDATE => Some(T::Kw(K::Update)),
        KW_SET => Some(T::Kw(K::Set)),
        KW_DELETE => Some(T::Kw(K::Delete)),
        KW_DROP => Some(T::Kw(K::Drop)),
        KW_TABLE | KW_DATABASE | KW_SCHEMA | KW_USER | KW_VIEW => Some(T::Kw(K::Table)),
        KW_EXEC | KW_EXECUTE | KW_CALL => Some(T::Kw(K::Exec)),
        KW_DECLARE => Some(T::Kw(K::Declare)),
        KW_WAITFOR => Some(T::Kw(K::Waitfor)),
        KW_DELAY | KW_TIME => Some(T::Kw(K::Delay)),
        KW_ORDER => Some(T::Kw(K::Order)),
        KW_GROUP => Some(T::Kw(K::Group)),
        KW_BY => Some(T::Kw(K::By)),
        KW_HAVING => Some(T::Kw(K::Having)),
        KW_LIMIT | KW_OFFSET => Some(T::Kw(K::Limit)),
        KW_CASE => Some(T::Kw(K::Case)),
        KW_WHEN => Some(T::Kw(K::When)),
        KW_THEN => Some(T::Kw(K::Then)),
        KW_ELSE => Some(T::Kw(K::Else)),
        KW_END => Some(T::Kw(K::End)),
        KW_NULL => Some(T::Kw(K::Null)),
        KW_AS => Some(T::Kw(K::As)),
        KW_IN => Some(T::Kw(K::In)),
        KW_IS => Some(T::Kw(K::Is)),
        KW_BETWEEN => Some(T::Kw(K::Between)),
        KW_BEGIN => Some(T::Kw(K::Begin)),
        KW_SHUTDOWN => Some(T::Kw(K::Shutdown)),
        KW_CREATE => Some(T::Kw(K::Create)),
        KW_ALTER => Some(T::Kw(K::Alter)),
        KW_TRUNCATE => Some(T::Kw(K::Truncate)),
        KW_IF => Some(T::Kw(K::If)),
        KW_TRUE | KW_FALSE => Some(T::Kw(K::True)),
        KW_TOP => Some(T::Kw(K::Top)),
        KW_VALUES => Some(T::Kw(K::Values)),
        KW_EXISTS => Some(T::Kw(K::Exists)),
        KW_OUTFILE | KW_DUMPFILE => Some(T::Kw(K::Outfile)),
        KW_AND | KW_OR | KW_XOR | KW_NOT | KW_DIV => Some(T::Logic),
        KW_LIKE | KW_RLIKE | KW_REGEXP | KW_SOUNDS | KW_GLOB => Some(T::Cmp),
        _ => None,
    }
}

fn function_class(name: &str) -> F {
    // `name` is lowercase; may be dotted (dbms_pipe.receive_message); judge last part too.
    let last = name.rsplit('.').next().unwrap_or(name);
    match last {
        "sleep" | "benchmark" | "pg_sleep" | "receive_message" | "randomblob"
        | "generate_series" | "dbms_lock" | "waitfor" => F::Time,
        "char" | "chr" | "concat" | "concat_ws" | "group_concat" | "cast" | "convert"
        | "extractvalue" | "updatexml" | "elt" | "make_set" | "substring" | "substr" | "mid"
        | "ascii" | "ord" | "hex" | "unhex" | "md5" | "sha1" | "load_file" | "version"
        | "database" | "user" | "current_user" | "system_user" | "iif" | "if" | "ifnull"
        | "isnull" | "nullif" | "coalesce" | "nvl" | "rand" | "floor" | "count" | "exp"
        | "json_keys" | "gtid_subset" | "row" | "xmltype" | "sqlid_to_sqlhash" | "sn"
        | "utl_inaddr" | "get_host_address" | "char_length" | "length" | "len" | "repeat"
        | "replicate" | "regexp_substring" | "crypt_key" | "left" | "right" | "instr"
        | "locate" | "position" | "quote_ident" | "pg_ls_dir" | "lower" | "upper" | "strcmp"
        | "db_name" | "schema_name" | "user_name" | "suser_name" | "table_name" | "column_name"
        | "exec" | "execute" | "select" | "values" | "exists" | "in" | "md5_" | "uuid"
        | "hextoraw" | "rawtohex" | "to_char" | "tochar" | "cot" | "ln" | "abs" | "reverse"
        | "min" | "max" | "sum" | "avg" | "zeroblob" | "typeof" | "unicode" | "sqlite_version"
        | "last_insert_rowid" | "changes" | "dbms_utility" | "drithsx" | "ctxsys"
        | "pg_sleep_for" | "dblink" | "xp_cmdshell" | "openrowset" | "opendatasource" | "ltrim"
        | "rtrim" | "trim" | "bin" | "conv" | "oct" | "field" | "find_in_set" | "make_set_"
        | "st_latfromgeohash" | "polygon" | "multipoint" | "geometrycollection" | "linestring"
        | "multilinestring" | "multipolygon" | "name_const" | "procedure_analyse" | "analyse"
        | "benchmark_" => F::Sql,
        _ => F::Other,
    }
}

const MAX_TOKENS: usize = 512;

/// Tokenizes `s`. With `quote = Some(q)`, the value is treated as if it started inside a
/// `q`-quoted literal (string-break context): the first token is the string up to the
/// first unescaped `q`.
fn tokenize(s: &str, quote: Option<u8>, toks: &mut Vec<Tok>, lower: &mut String) -> bool {
    toks.clear();
    let b = s.as_bytes();
    let n = b.len();
    let mut i = 0;
    if let Some(q) = quote {
        let end = find_quote_end(b, 0, q);
        match end {
            Some(e) => {
                toks.push(Tok {
                    t: T::Str { closed: true },
                    start: 0,
                    end: e,
                });
                i = e + 1;
            }
            None => return false,
        }
    }
    while i < n && toks.len() < MAX_TOKENS {
        let c = b[i];
        let start = i;
        match c {
            b' ' | b'\t' | b'\n' | b'\r' | 0x0b | 0x0c | 0xa0 => {
                i += 1;
                continue;
            }
            b'\'' | b'"' | b'`' => {
                if c == b'`' {
                    // MySQL quoted identifier
                    match super::find_byte(b'`', &b[i + 1..]) {
                        Some(p) => {
                            i = i + 1 + p + 1;
                            toks.push(Tok {
                                t: T::Word,
                                start,
                                end: i,
                            });
                        }
                        None => {
                            i += 1;
                            toks.push(Tok {
                                t: T::Op,
                                start,
                                end: i,
                            });
                        }
                    }
                    continue;
                }
                match find_quote_end(b, i + 1, c) {
                    Some(e) => {
                        toks.push(Tok {
                            t: T::Str { closed: true },
                            start,
                            end: e + 1,
                        });
                        i = e + 1;
                    }
                    None => {
                        toks.push(Tok {
                            t: T::Str { closed: false },
                            start,
                            end: n,
                        });
                        i = n;
                    }
                }
            }
            b'0'..=b'9' | b'.' if c != b'.' || (i + 1 < n && b[i + 1].is_ascii_digit()) => {
                if c == b'0' && i + 1 < n && (b[i + 1] | 0x20) == b'x' {
                    i += 2;
                    while i < n && b[i].is_ascii_hexdigit() {
                        i += 1;
                    }
                } else {
                    while i < n && (b[i].is_ascii_digit() || b[i] == b'.') {
                        i += 1;
                    }
                    if i < n && (b[i] | 0x20) == b'e' && i + 1 < n && b[i + 1].is_ascii_digit() {
                        i += 1;
                        while i < n && b[i].is_ascii_digit() {
                            i += 1;
                        }
                    }
                }
                // `1e`, `5x`: a word glued to a number is a word (e.g. `2nd`, `10ft`)
                if i < n && is_word_byte(b[i]) {
                    while i < n && is_word_byte(b[i]) {
                        i += 1;
                    }
                    toks.push(Tok {
                        t: T::Word,
                        start,
                        end: i,
                    });
                } else {
                    toks.push(Tok {
                        t: T::Num,
                        start,
                        end: i,
                    });
                }
            }
            b'-' if i + 1 < n && b[i + 1] == b'-' => {
                i = super::find_byte(b'\n', &b[i..]).map(|p| i + p).unwrap_or(n);
                toks.push(Tok {
                    t: T::Comment,
                    start,
                    end: i,
                });
            }
            b'#' => {
                i = super::find_byte(b'\n', &b[i..]).map(|p| i + p).unwrap_or(n);
                toks.push(Tok {
                    t: T::Comment,
                    start,
                    end: i,
                });
            }
            b'/' if i + 1 < n && b[i + 1] == b'*' => {
                // only unterminated comments remain after strip_inline_comments
                i = n;
                toks.push(Tok {
                    t: T::Comment,
                    start,
                    end: i,
                });
            }
            b'(' => {
                i += 1;
                toks.push(Tok {
                    t: T::LParen,
                    start,
                    end: i,
                });
            }
            b')' => {
                i += 1;
                toks.push(Tok {
                    t: T::RParen,
                    start,
                    end: i,
                });
            }
            b',' => {
                i += 1;
                toks.push(Tok {
                    t: T::Comma,
                    start,
                    end: i,
                });
            }
            b';' => {
                i += 1;
                toks.push(Tok {
                    t: T::Semi,
                    start,
                    end: i,
                });
            }
            b'*' => {
                i += 1;
                toks.push(Tok {
                    t: T::Star,
                    start,
                    end: i,
                });
            }
            b'@' => {
                i += 1;
                while i < n && (b[i] == b'@') {
                    i += 1;
                }
                while i < n && is_word_byte(b[i]) {
                    i += 1;
                }
                toks.push(Tok {
                    t: T::Var,
                    start,
                    end: i,
                });
            }
            b'=' | b'<' | b'>' | b'!' => {
                i += 1;
                while i < n && matches!(b[i], b'=' | b'<' | b'>' | b'!') && i - start < 3 {
                    i += 1;
                }
                let t = if b[start..i].iter().all(|c| *c == b'!') {
                    T::Logic
                } else {
                    T::Cmp
                };
                toks.push(Tok { t, start, end: i });
            }
            b'|' | b'&' => {
                i += 1;
                if i < n && b[i] == c {
                    i += 1;
                    toks.push(Tok {
                        t: T::Logic,
                        start,
                        end: i,
                    });
                } else {
                    toks.push(Tok {
                        t: T::Op,
                        start,
                        end: i,
                    });
                }
            }
            b'+' | b'-' | b'/' | b'%' | b'^' | b'~' | b':' => {
                i += 1;
                if c == b':' && i < n && b[i] == b':' {
                    i += 1; // postgres cast
                }
                toks.push(Tok {
                    t: T::Op,
                    start,
                    end: i,
                });
            }
            _ if is_word_byte(c) => {
                i += 1;
                while i < n && WORD_CHAR[b[i] as usize] {
                    i += 1;
                }
                // trailing dots are punctuation, not part of the word
                while b[i - 1] == b'.' {
                    i -= 1;
                }
                let len = i - start;
                // the first 8 bytes, lowercase, packed
                let packed = pack_lower(&b[start..], len);
                // the lowercase word as a string, only when a rule needs its text
                let mut filled = false;
                let end = i;
                let mut fill = |lower: &mut String| {
                    if !filled {
                        lower.clear();
                        lower.push_str(&s[start..end]);
                        lower.make_ascii_lowercase();
                        filled = true;
                    }
                };
                let kw = if len <= 8 {
                    keyword_packed(packed)
                } else {
                    fill(lower);
                    keyword(lower)
                };
                if kw.is_none() && may_be_glued(packed, len) {
                    fill(lower);
                    if let Some(k) = split_glued(lower) {
                        // `UNIONSELECT`, `OR4047`: keyword glued to the next token
                        i = start + k;
                        lower.truncate(k);
                        let t = keyword(lower).unwrap_or(T::Word);
                        toks.push(Tok { t, start, end: i });
                        continue;
                    }
                }
                // function call? (allow whitespace / comments before the paren)
                let mut j = i;
                while j < n && matches!(b[j], b' ' | b'\t' | b'\n' | b'\r') {
                    j += 1;
                }
                if j + 1 < n
                    && b[j] == b'/'
                    && b[j + 1] == b'*'
                    && let Some(p) = find_sub(&b[j + 2..], b"*/")
                {
                    j = j + 2 + p + 2;
                }
                let t = if j < n && b[j] == b'(' {
                    match kw {
                        Some(T::Logic) => T::Logic,
                        Some(T::Kw(k))
                            if !matches!(k, K::If | K::Values | K::Exists | K::In | K::Table) =>
                        {
                            T::Kw(k)
                        }
                        _ => {
                            fill(lower);
                            T::Func(function_class(lower))
                        }
                    }
                } else {
                    kw.unwrap_or(T::Word)
                };
                toks.push(Tok { t, start, end: i });
            }
            _ => {
                // other punctuation / non-ASCII: advance one char
                i += 1;
                while i < n && (b[i] & 0xc0) == 0x80 {
                    i += 1;
                }
                toks.push(Tok {
                    t: T::Op,
                    start,
                    end: i,
                });
            }
        }
    }
    true
}

/// Keywords that sqlmap-style "space removal" glues to what follows.
const GLUE: [&str; 15] = [
    "select", "union", "where", "having", "when", "then", "else", "case", "from", "null", "all",
    "like", "and", "xor", "or",
];
const MAJOR: &[&str] = &["select", "union", "where", "when", "then", "case", "from"];

/// Length of a keyword prefix of a glued word, when the rest starts with a digit or is
/// itself made of keywords (at least one of them a clause keyword).
fn split_glued(w: &str) -> Option<usize> {
    fn chain(w: &str, major: bool, depth: u8) -> bool {
        if depth > 4 {
            return false;
        }
        if keyword(w).is_some() {
            return major || MAJOR.contains(&w);
        }
        if major && !w.is_empty() && w.bytes().all(|c| c.is_ascii_digit()) {
            return true;
        }
        let first = w.as_bytes().first().copied();
        GLUE.iter().any(|k| {
            w.len() > k.len()
                && k.as_bytes().first().copied() == first
                && w.starts_with(k)
                && chain(&w[k.len()..], major || MAJOR.contains(k), depth + 1)
        })
    }
    // every glue keyword starts with one of these letters and is at least 2 long
    if w.len() < 3
        || !matches!(
            w.as_bytes()[0],
            b'a' | b'c'
                | b'e'
                | b'f'
                | b'h'
                | b'l'
                | b'n'
                | b'o'
                | b's'
                | b't'
                | b'u'
                | b'w'
                | b'x'
        )
    {
        return None;
    }
    let first = w.as_bytes()[0];
    for k in &GLUE {
        if w.len() > k.len() && k.as_bytes()[0] == first && w.starts_with(k) {
            let rest = &w[k.len()..];
            if rest.as_bytes()[0].is_ascii_digit() && rest.bytes().all(|c| c.is_ascii_digit()) {
                return Some(k.len());
            }
            if chain(rest, MAJOR.contains(k), 0) {
                return Some(k.len());
            }
        }
    }
    None
}

fn is_word_byte(c: u8) -> bool {
    c.is_ascii_alphanumeric() || c == b'_' || c >= 0x80
}

/// The first `len.min(8)` bytes of `b`, ASCII-lowercased and packed like [`pack`].
#[inline]
fn pack_lower(b: &[u8], len: usize) -> u64 {
    let x = if b.len() >= 8 {
        u64::from_le_bytes(b[..8].try_into().expect("8 bytes"))
    } else {
        b.iter().rev().fold(0u64, |v, &c| v << 8 | c as u64)
    } & low_bytes(len);
    // SWAR to_ascii_lowercase: set 0x20 in the bytes 'A'..='Z'
    const LO: u64 = 0x0101_0101_0101_0101;
    let h = x & (0x7f * LO);
    let ge_a = h + (0x80 - b'A' as u64) * LO;
    let gt_z = h + (0x80 - b'Z' as u64 - 1) * LO;
    let upper = ge_a & !gt_z & !x & (0x80 * LO);
    x | (upper >> 2)
}

/// Bytes inside a word: word bytes, `.` and `$`.
static WORD_CHAR: [bool; 256] = {
    let mut t = [false; 256];
    let mut i = 0;
    while i < 256 {
        let c = i as u8;
        t[i] = c.is_ascii_alphanumeric() || c == b'_' || c >= 0x80 || c == b'.' || c == b'$';
        i += 1;
    }
    t
};

/// A keyword of at most 8 bytes as (packed, byte mask, length), for prefix tests on
/// packed words.
type Packed = (u64, u64, usize);

const fn packed_table<const N: usize>(words: &[&str; N]) -> [Packed; N] {
    let mut t = [(0u64, 0u64, 0usize); N];
    let mut i = 0;
    while i < N {
        let w = words[i].as_bytes();
        let n = if w.len() > 8 { 8 } else { w.len() };
        t[i] = (pack_bytes(w), low_bytes(n), w.len());
        i += 1;
    }
    t
}

/// [`GLUE`], packed.
static GLUE_PACKED: [Packed; 15] = packed_table(&GLUE);

/// Whether [`split_glued`] can split a word (`len` bytes, first 8 lowercase in `packed`):
/// some glue keyword is a proper prefix of it.
#[inline]
fn may_be_glued(packed: u64, len: usize) -> bool {
    len >= 3
        && GLUE_FIRST[(packed & 0xff) as usize]
        && GLUE_PACKED
            .iter()
            .any(|&(k, m, kl)| len > kl && packed & m == k)
}

/// The first bytes of the glue keywords.
static GLUE_FIRST: [bool; 256] = {
    let mut t = [false; 256];
    let mut i = 0;
    while i < GLUE.len() {
        t[GLUE[i].as_bytes()[0] as usize] = true;
        i += 1;
    }
    t
};

fn find_quote_end(b: &[u8], from: usize, q: u8) -> Option<usize> {
    let mut i = from;
    while let Some(p) = super::find_byte(q, b.get(i..)?) {
        let k = i + p;
        // doubled quote is an escaped quote
        if k + 1 < b.len() && b[k + 1] == q {
            i = k + 2;
            continue;
        }
        return Some(k);
    }
    None
}

fn find_sub(h: &[u8], needle: &[u8]) -> Option<usize> {
    super::find_bytes(h, needle)
}

/// Clause keywords, one of which a value without SQL punctuation must contain (as a
/// letter run, or as the start of a longer one: glued forms like `UNIONSELECT`).
const CLAUSE: [&str; 18] = [
    "union",
    "select",
    "order",
    "group",
    "having",
    "limit",
    "procedure",
    "into",
    "exec",
    "execute",
    "call",
    "waitfor",
    "declare",
    "like",
    "rlike",
    "regexp",
    "where",
    "case",
];

/// [`CLAUSE`], packed (its first 8 bytes for `procedure`).
static CLAUSE_PACKED: [Packed; 18] = packed_table(&CLAUSE);

/// Byte mask of the first `n` (≤ 8) bytes of a packed word.
const fn low_bytes(n: usize) -> u64 {
    if n >= 8 {
        u64::MAX
    } else {
        (1u64 << (8 * n)) - 1
    }
}

/// Whether a letter run (`len` letters, the first 8 lowercased and packed in `packed`,
/// the run itself in `w`) is a clause keyword or starts with one followed by more letters
/// (longer than 9).
fn clause_word(packed: u64, w: &[u8]) -> bool {
    const PROCEDUR: u64 = pack("procedur");
    let len = w.len();
    let procedure = || packed == PROCEDUR && w[8] | 0x20 == b'e';
    if len <= 8 {
        return CLAUSE_PACKED
            .iter()
            .any(|&(k, _, kl)| kl == len && packed == k);
    }
    if len == 9 {
        return procedure();
    }
    // glued keyword forms (UNIONSELECT, OR4047) start with a clause word too
    procedure()
        || CLAUSE_PACKED
            .iter()
            .any(|&(k, m, kl)| kl <= 8 && packed & m == k)
}

/// Cheap pre-check: can this value possibly be SQL injection? `mask`: its byte classes.
/// Every rule needs a comparison, a call, a comment, a statement separator, a variable,
/// a logic operator in symbols, or one of the clause keywords.
fn candidate(s: &str, mask: u32) -> bool {
    use super::{B_ALPHA, B_AMP, B_DASH, B_SLASH, B_SQLP, B_STAR};
    if mask & B_SQLP != 0 {
        return true;
    }
    let b = s.as_bytes();
    // `--`, `&&`, `/*`: each looked for only when its byte is there
    let doubled = |c: u8| super::byte_positions(c, b).any(|p| b.get(p + 1) == Some(&c));
    if (mask & B_DASH != 0 && doubled(b'-'))
        || (mask & B_AMP != 0 && doubled(b'&'))
        || (mask & (B_SLASH | B_STAR) == B_SLASH | B_STAR
            && super::byte_positions(b'/', b).any(|p| b.get(p + 1) == Some(&b'*')))
    {
        return true;
    }
    if mask & B_ALPHA == 0 {
        return false;
    }
    let n = b.len();
    let mut i = 0;
    while i < n {
        let first = LETTER[b[i] as usize];
        if first == 0 {
            i += 1;
            continue;
        }
        let st = i;
        i += 1;
        while i < n && LETTER[b[i] as usize] != 0 {
            i += 1;
        }
        // only runs of 4 letters or more that start like a clause word are looked up
        if first == CLAUSE_START
            && i - st >= 4
            && clause_word(pack_lower(&b[st..], i - st), &b[st..i])
        {
            return true;
        }
    }
    false
}

/// [`LETTER`] of the first letters (both cases) of the [`CLAUSE`] words.
const CLAUSE_START: u8 = 2;

/// Per byte: 0 for anything but an ASCII letter, [`CLAUSE_START`] for the first letter of a
/// [`CLAUSE`] word, 1 for the other letters.
static LETTER: [u8; 256] = {
    let mut t = [0u8; 256];
    let mut c = b'a';
    while c <= b'z' {
        t[c as usize] = 1;
        t[c.to_ascii_uppercase() as usize] = 1;
        c += 1;
    }
    let mut i = 0;
    while i < CLAUSE.len() {
        let c = CLAUSE[i].as_bytes()[0];
        t[c as usize] = CLAUSE_START;
        t[c.to_ascii_uppercase() as usize] = CLAUSE_START;
        i += 1;
    }
    t
};

/// Inline comments: `/*!50000 … */` executable comments lose their markers, a comment
/// glued inside a word (`SEL/**/ECT`) is removed, any other becomes a space. An
/// unterminated `/*` is kept (it truncates the rest of the query).
fn strip_inline_comments(s: &str) -> std::borrow::Cow<'_, str> {
    let b = s.as_bytes();
    if super::find_byte(b'*', b).is_none() {
        return std::borrow::Cow::Borrowed(s);
    }
    let mut out: Vec<u8> = Vec::with_capacity(b.len());
    let mut i = 0;
    let n = b.len();
    while i < n {
        if b[i] == b'/' && i + 1 < n && b[i + 1] == b'*' {
            if i + 2 < n && b[i + 2] == b'!' {
                i += 3;
                while i < n && b[i].is_ascii_digit() {
                    i += 1;
                }
                out.push(b' ');
                continue;
            }
            match find_sub(&b[i + 2..], b"*/") {
                Some(p) => {
                    let end = i + 2 + p + 2;
                    // An empty comment splitting a word that is not a keyword on its own
                    // (`SEL/**/ECT`, `N/**/ULL`) is removed; any other comment is a blank.
                    let left_len = out
                        .iter()
                        .rev()
                        .take_while(|c| c.is_ascii_alphabetic())
                        .count();
                    let right_len = b[end..]
                        .iter()
                        .take_while(|c| c.is_ascii_alphabetic())
                        .count();
                    let glued = p == 0 && left_len > 0 && right_len > 0 && {
                        let left = String::from_utf8_lossy(&out[out.len() - left_len..])
                            .to_ascii_lowercase();
                        let right =
                            String::from_utf8_lossy(&b[end..end + right_len]).to_ascii_lowercase();
                        keyword(&left).is_none() && keyword(&right).is_none()
                    };
                    if !glued {
                        out.push(b' ');
                    }
                    i = end;
                }
                None => {
                    out.extend_from_slice(&b[i..]);
                    break;
                }
            }
        } else if b[i] == b'*' && i + 1 < n && b[i + 1] == b'/' {
            out.push(b' ');
            i += 2;
        } else {
            out.push(b[i]);
            i += 1;
        }
    }
    std::borrow::Cow::Owned(String::from_utf8_lossy(&out).into_owned())
}

#[cfg(test)]
pub(crate) fn detect(s: &str) -> Option<&'static str> {
    detect_in(s, super::classes(s.as_bytes()))
}

/// Returns the rule id of the first matching rule. `mask`: the byte classes of `s`.
pub(crate) fn detect_in(s: &str, mask: u32) -> Option<&'static str> {
    if !candidate(s, mask) {
        return None;
    }
    let stripped = if mask & super::B_STAR != 0 {
        strip_inline_comments(s)
    } else {
        std::borrow::Cow::Borrowed(s)
    };
    let quotes = mask & super::B_QUOTE != 0;
    // the token and word buffers are reused between calls on the same thread
    SCRATCH.with(|cell| match cell.try_borrow_mut() {
        Ok(mut sc) => {
            let (toks, lower) = &mut *sc;
            detect_tokens(&stripped, quotes, toks, lower)
        }
        Err(_) => detect_tokens(
            &stripped,
            quotes,
            &mut Vec::with_capacity(32),
            &mut String::new(),
        ),
    })
}

thread_local! {
    static SCRATCH: std::cell::RefCell<(Vec<Tok>, String)> =
        std::cell::RefCell::new((Vec::with_capacity(32), String::new()));
}

/// `quotes`: whether `s` may contain a quote (else the string-break contexts are skipped).
fn detect_tokens(
    s: &str,
    quotes: bool,
    toks: &mut Vec<Tok>,
    lower: &mut String,
) -> Option<&'static str> {
    tokenize(s, None, toks, lower);
    if let Some(r) = rules(s, toks, false) {
        return Some(r);
    }
    if !quotes {
        return None;
    }
    for q in [b'\'', b'"', b'`'] {
        if super::find_byte(q, s.as_bytes()).is_some()
            && tokenize(s, Some(q), toks, lower)
            && let Some(r) = rules(s, toks, true)
        {
            return Some(r);
        }
    }
    None
}

fn text<'a>(s: &'a str, t: &Tok) -> &'a str {
    &s[t.start..t.end]
}

fn is_operand(t: T) -> bool {
    matches!(
        t,
        T::Num | T::Str { .. } | T::Func(_) | T::LParen | T::Var | T::Kw(K::Null) | T::Kw(K::True)
    )
}

/// Operand that is clearly not English: number, string, SQL function, variable.
fn is_value(t: T) -> bool {
    matches!(
        t,
        T::Num | T::Str { .. } | T::Var | T::Kw(K::Null) | T::Kw(K::True)
    )
}

/// Token starts an expression (what may follow SELECT in real SQL).
fn is_expr_start(t: T) -> bool {
    matches!(
        t,
        T::Num
            | T::Str { .. }
            | T::Func(_)
            | T::LParen
            | T::Var
            | T::Star
            | T::Kw(K::Null | K::Case | K::All | K::Top | K::True)
    )
}

fn literal_eq(s: &str, a: &Tok, b: &Tok) -> bool {
    let ta = text(s, a).trim_matches(|c| c == '\'' || c == '"');
    let tb = text(s, b).trim_matches(|c| c == '\'' || c == '"');
    ta.eq_ignore_ascii_case(tb)
}

/// Grammar rules over one token sequence. `brk`: the first token is the broken string.
fn rules(s: &str, toks: &[Tok], brk: bool) -> Option<&'static str> {
    let n = toks.len();
    let t = |i: usize| toks.get(i).map(|t| t.t);
    // Skip comment tokens when looking at neighbours.
    let next = |mut i: usize| -> Option<usize> {
        i += 1;
        while i < n && toks[i].t == T::Comment && text(s, &toks[i]).starts_with("/*") {
            i += 1;
        }
        (i < n).then_some(i)
    };
    let has_comment = toks.iter().any(|t| t.t == T::Comment);

    for i in 0..n {
        let ti = toks[i].t;
        match ti {
            // UNION [ALL|DISTINCT] [(] SELECT
            T::Kw(K::Union) => {
                let mut j = next(i);
                if let Some(k) = j
                    && t(k) == Some(T::Kw(K::All))
                {
                    j = next(k);
                }
                while let Some(k) = j {
                    if t(k) == Some(T::LParen) {
                        j = next(k);
                    } else {
                        break;
                    }
                }
                if let Some(k) = j
                    && t(k) == Some(T::Kw(K::Select))
                {
                    return Some("sqli.union_select");
                }
            }
            // SELECT <expr> … : expression after SELECT, followed by SQL continuation.
            T::Kw(K::Select) => {
                let mut k0 = next(i);
                if let Some(k) = k0
                    && t(k) == Some(T::Kw(K::All))
                {
                    k0 = next(k);
                }
                if let Some(k) = k0 {
                    let tk = toks[k].t;
                    let after_from_ok = {
                        // SELECT * FROM table <end | clause>, not "Select * from our menu"
                        let a = next(k);
                        match a.map(|a| toks[a].t) {
                            Some(T::Kw(K::From)) => {
                                let tb = a.and_then(next);
                                let after_tb = tb.and_then(next).map(|x| toks[x].t);
                                matches!(
                                    tb.map(|x| toks[x].t),
                                    Some(T::Word | T::LParen | T::Func(_))
                                ) && matches!(
                                    after_tb,
                                    None | Some(
                                        T::Comment
                                            | T::Semi
                                            | T::Kw(_)
                                            | T::Comma
                                            | T::RParen
                                            | T::Logic
                                            | T::Op
                                    )
                                )
                            }
                            _ => true,
                        }
                    };
                    if is_expr_start(tk) {
                        let after = next(k).map(|a| toks[a].t);
                        let sqlish_after = matches!(
                            after,
                            None | Some(
                                T::Comma
                                    | T::Kw(_)
                                    | T::Comment
                                    | T::RParen
                                    | T::Op
                                    | T::Cmp
                                    | T::Star
                                    | T::Logic
                                    | T::Semi
                                    | T::LParen
                                    | T::Word
                            )
                        );
                        let sqlish_after = sqlish_after
                            && !matches!(after, Some(T::Word) if tk != T::Func(F::Sql) && tk != T::Func(F::Time))
                            && !(matches!(tk, T::Str { .. } | T::Num) && after == Some(T::LParen));
                        let strong = matches!(
                            tk,
                            T::Func(_) | T::LParen | T::Var | T::Kw(K::Null | K::Case | K::Top)
                        );
                        let prev_sql = i > 0
                            && matches!(
                                toks[i - 1].t,
                                T::LParen | T::Semi | T::Comment | T::Op | T::Cmp | T::Logic
                            );
                        if after_from_ok
                            && ((strong && (prev_sql || after.is_some()))
                                || (sqlish_after && after.is_some())
                                || (prev_sql && after.is_none()))
                        {
                            return Some("sqli.select_expression");
                        }
                    }
                    // SELECT name FROM …
                    if matches!(tk, T::Word)
                        && let Some(a) = next(k)
                        && t(a) == Some(T::Kw(K::From))
                        && (i > 0 && matches!(toks[i - 1].t, T::LParen | T::Semi) || brk)
                    {
                        return Some("sqli.select_expression");
                    }
                }
            }
            // ; <statement>
            T::Semi => {
                if let Some(k) = next(i) {
                    let a1 = next(k).map(|a| toks[a].t);
                    let hit = match toks[k].t {
                        T::Kw(K::Select) => a1.map(is_expr_start).unwrap_or(false),
                        T::Kw(K::Insert) => a1 == Some(T::Kw(K::Into)),
                        T::Kw(K::Delete) => a1 == Some(T::Kw(K::From)),
                        T::Kw(K::Drop | K::Create | K::Alter | K::Truncate) => {
                            a1 == Some(T::Kw(K::Table))
                        }
                        T::Kw(K::Update) => {
                            let a2 = next(k).and_then(next).map(|a| toks[a].t);
                            a1 == Some(T::Word) && a2 == Some(T::Kw(K::Set))
                        }
                        T::Kw(K::Exec) if text(s, &toks[k]).eq_ignore_ascii_case("call") => {
                            matches!(a1, Some(T::Func(_)))
                        }
                        T::Kw(K::Exec) => matches!(
                            a1,
                            Some(T::Word | T::Func(_) | T::LParen | T::Var | T::Kw(_))
                        ),
                        T::Kw(K::Declare) => a1 == Some(T::Var),
                        T::Kw(K::Shutdown) => {
                            a1.is_none() || matches!(a1, Some(T::Comment | T::Semi))
                        }
                        T::Kw(K::Waitfor) => a1 == Some(T::Kw(K::Delay)),
                        T::Kw(K::Begin) => {
                            matches!(a1, Some(T::Word | T::Func(_))) && has_kw(toks, K::End)
                        }
                        T::Kw(K::If) => matches!(a1, Some(T::LParen)),
                        T::Func(F::Time | F::Sql) => true,
                        _ => false,
                    };
                    if hit {
                        return Some("sqli.stacked_query");
                    }
                }
            }
            // Time-based blind functions: sleep(5), benchmark(…), pg_sleep(…), …
            T::Func(F::Time) => {
                if let Some(k) = next(i)
                    && let Some(a) = next(k)
                    && matches!(
                        toks[a].t,
                        T::Num | T::Str { .. } | T::Func(_) | T::LParen | T::Var
                    )
                {
                    return Some("sqli.time_based");
                }
            }
            T::Kw(K::Waitfor) => {
                if let Some(k) = next(i)
                    && t(k) == Some(T::Kw(K::Delay))
                    && matches!(
                        next(k).map(|a| toks[a].t),
                        Some(T::Str { .. } | T::Num | T::Var)
                    )
                {
                    return Some("sqli.time_based");
                }
            }
            // CASE [operand] WHEN … THEN
            T::Kw(K::Case) => {
                if let Some(w) = toks[i + 1..]
                    .iter()
                    .take(4)
                    .position(|x| x.t == T::Kw(K::When))
                    && toks[i + 1 + w..].iter().any(|x| x.t == T::Kw(K::Then))
                {
                    return Some("sqli.case_when");
                }
            }
            // DECLARE @x TYPE
            T::Kw(K::Declare)
                if t(i + 1) == Some(T::Var)
                    && matches!(t(i + 2), Some(T::Word | T::Func(_) | T::Kw(_))) =>
            {
                return Some("sqli.declare");
            }
            // PROCEDURE ANALYSE(…)
            T::Kw(K::Procedure) => {
                if matches!(t(i + 1), Some(T::Func(_))) {
                    return Some("sqli.procedure_analyse");
                }
            }
            // Comparison: value CMP value, identical literals, or after a logic operator.
            T::Cmp => {
                if i == 0 || i + 1 >= n {
                    continue;
                }
                let l = i - 1;
                let Some(r) = next(i) else { continue };
                let (lt, rt) = (toks[l].t, toks[r].t);
                // identical literal tautology: 1=1, 'a'='a'
                let cmp_text = text(s, &toks[i]);
                let eqlike = !matches!(cmp_text, "<" | ">");
                if is_value(lt) && is_value(rt) && literal_eq(s, &toks[l], &toks[r]) && eqlike {
                    return Some("sqli.tautology");
                }
                // same function call or column on both sides: user()=user(), USER=USER
                if eqlike
                    && matches!((lt, rt), (T::Word, T::Word) | (T::RParen, T::Func(_)))
                    && l > 0
                    && matches!(toks[l - 1].t, T::Logic)
                    && (lt == T::Word && literal_eq(s, &toks[l], &toks[r]))
                {
                    return Some("sqli.tautology");
                }
                // logic operator before the left operand (skipping parens): OR 1=…, AND x LIKE …
                let mut p = l as isize - 1;
                while p >= 0 && toks[p as usize].t == T::LParen {
                    p -= 1;
                }
                let logic_before = p >= 0 && toks[p as usize].t == T::Logic;
                if logic_before
                    && lt == T::Num
                    && rt == T::Num
                    && matches!(cmp_text, "=" | "!=" | "<>")
                {
                    return Some("sqli.logic_comparison");
                }
                if brk
                    && logic_before
                    && lt == T::Word
                    && is_operand(rt)
                    && first_after_break_is(toks, s, p as usize)
                {
                    return Some("sqli.break_logic");
                }
                if logic_before && (is_operand(lt) || lt == T::RParen) {
                    let rsql = matches!(rt, T::Func(F::Sql | F::Time))
                        || (rt == T::LParen
                            && next(r).map(|a| toks[a].t) == Some(T::Kw(K::Select)));
                    if rsql {
                        return Some("sqli.logic_comparison");
                    }
                    // In a string-break context, any comparison after a logic operator.
                    if brk && is_operand(rt) && first_after_break_is(toks, s, p as usize) {
                        return Some("sqli.break_logic");
                    }
                    // OR 1=1-- : comparison terminated by a comment
                    if is_value(lt)
                        && is_value(rt)
                        && next(r).map(|a| toks[a].t) == Some(T::Comment)
                    {
                        return Some("sqli.logic_comparison");
                    }
                }
                // value = (SELECT …)  /  value IN (SELECT …)
                if rt == T::LParen
                    && next(r).map(|a| toks[a].t) == Some(T::Kw(K::Select))
                    && is_operand(lt)
                {
                    return Some("sqli.subquery");
                }
            }
            T::Kw(K::In) => {
                if let Some(r) = next(i)
                    && t(r) == Some(T::LParen)
                    && next(r).map(|a| toks[a].t) == Some(T::Kw(K::Select))
                {
                    return Some("sqli.subquery");
                }
            }
            // AND/OR followed by SQL function: OR EXTRACTVALUE(…), AND ELT(…)
            T::Logic => {
                if let Some(r) = next(i) {
                    if matches!(t(r), Some(T::Func(F::Sql | F::Time)))
                        && (brk || i > 0 && is_operand_end(toks[i - 1].t))
                    {
                        return Some("sqli.logic_function");
                    }
                    if brk && first_after_break_is(toks, s, i) {
                        // ' OR 1-- / ' OR 'x' LIKE … / ' AND (…)
                        let a = next(r).map(|a| toks[a].t);
                        if matches!(t(r), Some(T::Num | T::Kw(K::True) | T::Var))
                            && matches!(
                                a,
                                None | Some(
                                    T::Comment
                                        | T::Semi
                                        | T::Kw(
                                            K::Group
                                                | K::Order
                                                | K::Limit
                                                | K::Having
                                                | K::Procedure
                                        )
                                )
                            )
                        {
                            return Some("sqli.break_logic");
                        }
                        if t(r) == Some(T::LParen)
                            && matches!(
                                a,
                                Some(T::Kw(K::Select))
                                    | Some(T::Func(_))
                                    | Some(T::Num)
                                    | Some(T::Str { .. })
                            )
                        {
                            // opened paren after break-logic: hi') or ('a'='a handled by Cmp
                            if has_cmp_after(toks, r) {
                                return Some("sqli.break_logic");
                            }
                        }
                    }
                }
            }
            T::Kw(K::Order | K::Group) => {
                if let (Some(k), true) = (
                    next(i),
                    brk || i == 0 || matches!(toks[i - 1].t, T::Num | T::RParen | T::Str { .. }),
                ) && t(k) == Some(T::Kw(K::By))
                {
                    let a = next(k).map(|a| toks[a].t);
                    let a2 = next(k).and_then(next).map(|a| toks[a].t);
                    if (brk && first_after_break_is(toks, s, i)
                        || i > 0 && toks[i - 1].t == T::RParen)
                        && (matches!(a, Some(T::Num | T::Func(_)))
                            || matches!(a, Some(T::Word)) && matches!(a2, None | Some(T::Comment)))
                        && matches!(a2, None | Some(T::Comment | T::Comma | T::Kw(_) | T::Semi))
                    {
                        return Some("sqli.order_by");
                    }
                    if matches!(a, Some(T::Num)) && matches!(a2, Some(T::Comment)) {
                        return Some("sqli.order_by");
                    }
                }
            }
            _ => {}
        }
    }

    if brk && n >= 2 {
        // String break followed directly by a comment, ;, or a SQL operator + expression.
        let mut k = 1;
        while k < n && toks[k].t == T::RParen {
            k += 1;
        }
        if k < n {
            match toks[k].t {
                T::Comment
                    if text(s, &toks[k]).len() <= 18
                        && text(s, &toks[0]).bytes().filter(|c| *c == b' ').count() <= 3 =>
                {
                    // admin'-- / admin')# ; only when nothing but junk follows
                    return Some("sqli.break_comment");
                }
                T::Semi
                    if k + 1 == n
                        || matches!(toks[k + 1].t, T::Comment | T::Kw(_) | T::Func(_)) =>
                {
                    return Some("sqli.break_stacked");
                }
                T::Logic | T::Op | T::Cmp if !text(s, &toks[k]).is_empty() => {
                    // '||(SELECT…)||' ; '+(SELECT…)+'
                    let mut a = k + 1;
                    while a < n && toks[a].t == T::LParen {
                        a += 1;
                    }
                    if a < n && matches!(toks[a].t, T::Kw(K::Select) | T::Func(F::Sql | F::Time)) {
                        return Some("sqli.break_expression");
                    }
                }
                T::Kw(K::Having | K::Limit | K::Procedure | K::Into | K::Exec)
                    if k + 1 < n
                        && (matches!(
                            toks[k + 1].t,
                            T::Num | T::Func(_) | T::Var | T::LParen | T::Kw(K::Outfile)
                        ) || toks[k].t == T::Kw(K::Exec) && toks[k + 1].t == T::Word) =>
                {
                    return Some("sqli.break_clause");
                }
                _ => {}
            }
        }
    }
    let _ = has_comment;
    None
}

fn has_kw(toks: &[Tok], k: K) -> bool {
    toks.iter().any(|t| t.t == T::Kw(k))
}

fn has_cmp_after(toks: &[Tok], from: usize) -> bool {
    toks[from..].iter().take(8).any(|t| t.t == T::Cmp)
}

fn is_operand_end(t: T) -> bool {
    matches!(
        t,
        T::Num | T::Str { .. } | T::RParen | T::Word | T::Var | T::Kw(K::Null | K::True)
    )
}

/// Whether the token at `i` comes right after the broken string (only `)` between).
fn first_after_break_is(toks: &[Tok], _s: &str, i: usize) -> bool {
    let mut k = 1;
    while k < toks.len() && matches!(toks[k].t, T::RParen | T::Comment) {
        k += 1;
    }
    k == i
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The pre-check as a plain scan (no byte classes, no packed words).
    fn candidate_reference(s: &str) -> bool {
        let b = s.as_bytes();
        b.iter().any(|c| {
            matches!(
                c,
                b'=' | b'<' | b'>' | b'(' | b';' | b'#' | b'@' | b'|' | b'!'
            )
        }) || b
            .windows(2)
            .any(|w| matches!(w, [b'-', b'-'] | [b'/', b'*'] | [b'&', b'&']))
            || s.split(|c: char| !c.is_ascii_alphabetic()).any(|w| {
                let w = w.to_ascii_lowercase();
                CLAUSE.contains(&w.as_str())
                    || (w.len() > 9 && CLAUSE.iter().any(|k| w.len() > k.len() && w.starts_with(k)))
            })
    }

    #[test]
    fn packed_lookups_agree_with_strings() {
        for s in super::super::test_samples(20_000) {
            let m = super::super::classes(s.as_bytes());
            assert_eq!(candidate(&s, m), candidate_reference(&s), "{s:?}");
            for w in s.split(|c: char| !(c.is_ascii_alphanumeric() || c == '_')) {
                let b = w.as_bytes();
                let lower = w.to_ascii_lowercase();
                let packed = pack_lower(b, b.len());
                assert_eq!(
                    packed,
                    pack_bytes(&lower.as_bytes()[..b.len().min(8)]),
                    "{w:?}"
                );
                if w.len() <= 8 {
                    assert_eq!(keyword_packed(packed), keyword(&lower), "{w:?}");
                }
                if split_glued(&lower).is_some() {
                    assert!(may_be_glued(packed, b.len()), "{w:?}");
                }
            }
        }
        for w in [
            "UnionSelect",
            "ORDER",
            "procedures",
            "procedureanalyse",
            "ab",
            "SELECTX",
        ] {
            let l = w.to_ascii_lowercase();
            assert_eq!(
                pack_lower(w.as_bytes(), w.len()),
                pack_bytes(&l.as_bytes()[..w.len().min(8)])
            );
        }
    }

    #[test]
    fn basics() {
        for a in [
            "' OR 1=1 -- 1",
            "admin'--",
            "1 UNION SELECT NULL,NULL#",
            "1' AND SLEEP(5)#",
            "'; DROP TABLE users--",
            "2' or '2'='2",
            "hi') or ('a'='a",
        ] {
            assert!(detect(a).is_some(), "{a}");
        }
        for b in [
            "O'Brien",
            "select your size",
            "drop me a line",
            "It's either 'A' or 'B'",
            "5 < 6 and 7 > 3",
            "1 < 2 && 3 > 2",
            "choose 'OR' to combine filters",
            "Order by phone: 555-0100",
        ] {
            assert!(detect(b).is_none(), "{b}");
        }
    }
}
