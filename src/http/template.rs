//! Templated injection: an injected message's content written once as a
//! minijinja template, rendered per recipient (or once for all) with the
//! request's `substitutions` and each recipient's own.
//!
//! Owns: [`Plan`] (the request's templates, compiled once, and its
//! values), [`Plan::render`] (one message's content) and the template
//! builder ([`Builder`]: `subject`, `text`, `html`, `from`, `to`,
//! `reply_to`, `headers`, made into a MIME message by mail-builder, as
//! KumoMTA's builder does). Pure: no I/O.
//!
//! The header section and the body are separate templates, so that a
//! value rendered into a header can be checked: one with a CR or LF in
//! it would start a header line of its own, and is refused. A missing
//! value is an error (strict), never an empty string in a customer's
//! mail. Errors name the template part and the line.
//!
//! May call: nothing else in the crate (minijinja, mail-builder).
//! Must not: queue anything (the injection endpoint does).

use std::collections::{BTreeMap, HashMap};

use minijinja::{Environment, UndefinedBehavior, Value};
use serde::Deserialize;

/// The template builder's fields (`template` in a request).
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Builder {
    pub subject: Option<String>,
    /// The plain text part.
    pub text: Option<String>,
    /// The HTML part (with `text`: `multipart/alternative`).
    pub html: Option<String>,
    /// The From header, e.g. `"Shop <news@shop.example>"`.
    pub from: Option<String>,
    /// The To header; per-recipient messages default to the recipient.
    pub to: Option<String>,
    pub reply_to: Option<String>,
    /// Further header fields, by name.
    #[serde(default)]
    pub headers: BTreeMap<String, String>,
}

/// Why a template could not be used: where, and what.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("template {part}{}: {what}", line.map(|l| format!(", line {l}")).unwrap_or_default())]
pub struct TemplateError {
    /// The part: `content header`, `content body`, `subject`, `text`,
    /// `html`, `header NAME`, ...
    pub part: String,
    pub line: Option<usize>,
    pub what: String,
}

impl TemplateError {
    fn of(e: minijinja::Error) -> TemplateError {
        let what = match e.detail() {
            Some(d) => format!("{}: {d}", e.kind()),
            None => e.kind().to_string(),
        };
        TemplateError {
            part: e.name().unwrap_or("?").to_string(),
            line: e.line(),
            what,
        }
    }
}

/// Instructions one rendering may run (minijinja's fuel): a template that
/// loops without end, or nearly, is an error, not a busy shard. A message
/// of a few hundred lines and values takes a few thousand.
pub const FUEL: u64 = 2_000_000;

/// Template names whose output goes into a header field.
const HEADER_PARTS: [&str; 5] = ["content header", "subject", "from", "to", "reply_to"];

fn is_header_part(name: &str) -> bool {
    HEADER_PARTS.contains(&name) || name.starts_with("header ")
}

/// The shape of the message to render.
#[derive(Debug)]
enum Shape {
    /// `content`: header section and body as written.
    Content,
    /// `template`: the builder's fields (the header names are kept in
    /// order).
    Built { headers: Vec<String> },
}

/// A request's templates, compiled, and the values to render them with.
#[derive(Debug)]
pub struct Plan {
    env: Environment<'static>,
    /// The most one rendered part may write (`smtp.max_message_size`).
    max_bytes: usize,
    shape: Shape,
    /// `substitutions` (for every recipient), made a template value once.
    global: Value,
    /// Each recipient's own `substitutions`, by address as queued.
    per_rcpt: HashMap<String, Value>,
}

impl Plan {
    /// Compiles `content` (a whole message) or `builder`'s fields.
    pub fn compile(
        content: Option<&str>,
        builder: Option<&Builder>,
        global: serde_json::Map<String, serde_json::Value>,
        per_rcpt: HashMap<String, serde_json::Map<String, serde_json::Value>>,
        max_bytes: usize,
    ) -> Result<Plan, TemplateError> {
        let mut env = environment();
        let mut add = |name: String, source: &str| {
            env.add_template_owned(name, source.to_string())
                .map_err(TemplateError::of)
        };
        let shape = match (content, builder) {
            (Some(content), None) => {
                let (head, body) = split_header_section(content);
                add("content header".into(), head)?;
                add("content body".into(), body)?;
                Shape::Content
            }
            (None, Some(b)) => {
                for (name, field) in [
                    ("subject", &b.subject),
                    ("text", &b.text),
                    ("html", &b.html),
                    ("from", &b.from),
                    ("to", &b.to),
                    ("reply_to", &b.reply_to),
                ] {
                    if let Some(source) = field {
                        add(name.into(), source)?;
                    }
                }
                if b.text.is_none() && b.html.is_none() {
                    return Err(part_error("template", "needs text or html"));
                }
                for (name, source) in &b.headers {
                    if !valid_field_name(name) {
                        return Err(part_error(
                            &format!("header {name:?}"),
                            "not a header field name",
                        ));
                    }
                    add(format!("header {name}"), source)?;
                }
                Shape::Built {
                    headers: b.headers.keys().cloned().collect(),
                }
            }
            _ => return Err(part_error("content", "give content or template, not both")),
        };
        Ok(Plan {
            env,
            max_bytes,
            shape,
            global: Value::from_serialize(&global),
            per_rcpt: per_rcpt
                .into_iter()
                .map(|(rcpt, values)| (rcpt, Value::from_serialize(&values)))
                .collect(),
        })
    }

    /// One message per recipient: some recipient has values of its own.
    pub fn per_recipient(&self) -> bool {
        !self.per_rcpt.is_empty()
    }

    /// The content of the message for `rcpt` (None: the one message for
    /// every recipient), its line endings as the template wrote them. A
    /// message the builder makes gets `message_id` (mail-builder would
    /// name the machine's host in one of its own).
    pub fn render(&self, rcpt: Option<&str>, message_id: &str) -> Result<Vec<u8>, TemplateError> {
        // The recipient's own values over the request's (merge_maps: the
        // later map wins, as the tests check), merged lazily: shared, not
        // copied, per rendering.
        let ctx = match rcpt.and_then(|r| self.per_rcpt.get(r)) {
            Some(own) => minijinja::value::merge_maps([self.global.clone(), own.clone()]),
            None => self.global.clone(),
        };
        let render = |name: &str| -> Result<String, TemplateError> {
            let t = self.env.get_template(name).map_err(TemplateError::of)?;
            let mut out = Bounded {
                out: Vec::new(),
                room: self.max_bytes,
            };
            t.render_captured_to(&ctx, &mut out)
                .map_err(|e| match out.room {
                    0 => part_error(
                        name,
                        &format!("renders to more than {} bytes", self.max_bytes),
                    ),
                    _ => TemplateError::of(e),
                })?;
            String::from_utf8(out.out).map_err(|_| part_error(name, "renders to invalid UTF-8"))
        };
        match &self.shape {
            Shape::Content => {
                let mut out = render("content header")?;
                out.push_str(&render("content body")?);
                Ok(out.into_bytes())
            }
            Shape::Built { headers } => self.build(&render, headers, rcpt, message_id),
        }
    }

    fn build(
        &self,
        render: &dyn Fn(&str) -> Result<String, TemplateError>,
        headers: &[String],
        rcpt: Option<&str>,
        message_id: &str,
    ) -> Result<Vec<u8>, TemplateError> {
        use mail_builder::MessageBuilder;
        use mail_builder::headers::HeaderType;
        use mail_builder::headers::raw::Raw;
        use mail_builder::headers::text::Text;
        let has = |name: &str| self.env.get_template(name).is_ok();
        let field = |value: String| -> HeaderType<'static> {
            match value.is_ascii() {
                true => Raw::new(value).into(),
                false => Text::new(value).into(),
            }
        };
        let mut m = MessageBuilder::new().message_id(message_id.to_string());
        for (name, header) in [("from", "From"), ("reply_to", "Reply-To")] {
            if has(name) {
                m = m.header(header, field(render(name)?));
            }
        }
        match (has("to"), rcpt) {
            (true, _) => m = m.header("To", field(render("to")?)),
            (false, Some(r)) => m = m.header("To", Raw::new(format!("<{r}>"))),
            (false, None) => {}
        }
        if has("subject") {
            m = m.subject(render("subject")?);
        }
        for name in headers {
            m = m.header(name.clone(), field(render(&format!("header {name}"))?));
        }
        if has("text") {
            m = m.text_body(render("text")?);
        }
        if has("html") {
            m = m.html_body(render("html")?);
        }
        m.write_to_vec()
            .map_err(|e| part_error("template", &e.to_string()))
    }
}

/// A rendering's output, refused past `room` bytes.
struct Bounded {
    out: Vec<u8>,
    room: usize,
}

impl std::io::Write for Bounded {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        if buf.len() > self.room {
            self.room = 0;
            return Err(std::io::Error::other("too large"));
        }
        self.room -= buf.len();
        self.out.extend_from_slice(buf);
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// The template engine as every request's templates use it: strict,
/// bounded by [`FUEL`], HTML-escaping in `html`, no line break from a value
/// into a header field.
fn environment() -> Environment<'static> {
    let mut env = Environment::new();
    env.set_fuel(Some(FUEL));
    env.set_undefined_behavior(UndefinedBehavior::Strict);
    // The header section ends with an empty line: keep it.
    env.set_keep_trailing_newline(true);
    // Values in the HTML part are HTML-escaped; elsewhere as given.
    env.set_auto_escape_callback(|name| match name {
        "html" => minijinja::AutoEscape::Html,
        _ => minijinja::AutoEscape::None,
    });
    env.set_formatter(|out, state, value| {
        if is_header_part(state.name()) {
            let text = value.to_string();
            if text.contains(['\r', '\n']) {
                return Err(minijinja::Error::new(
                    minijinja::ErrorKind::InvalidOperation,
                    "a value with a line break in a header field (it would start a header line of its own)",
                ));
            }
        }
        minijinja::escape_formatter(out, state, value)
    });
    env
}

fn part_error(part: &str, what: &str) -> TemplateError {
    TemplateError {
        part: part.to_string(),
        line: None,
        what: what.to_string(),
    }
}

/// RFC 5322 §3.6.8: printable ASCII but `:`.
fn valid_field_name(name: &str) -> bool {
    !name.is_empty() && name.bytes().all(|b| (33..=126).contains(&b) && b != b':')
}

/// `content` cut after its header section (the first empty line, kept
/// with the header section); all header section when there is no body.
fn split_header_section(content: &str) -> (&str, &str) {
    let mut at = 0;
    for line in content.split_inclusive('\n') {
        at += line.len();
        if line == "\n" || line == "\r\n" {
            return content.split_at(at);
        }
    }
    (content, "")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn map(v: serde_json::Value) -> serde_json::Map<String, serde_json::Value> {
        v.as_object().unwrap().clone()
    }

    #[test]
    fn content_is_rendered_with_global_and_own_values() {
        let plan = Plan::compile(
            Some("Subject: Hi {{ name }}\r\n\r\nDear {{ name }}, your code is {{ code }}.\r\n"),
            None,
            map(serde_json::json!({"code": "X1", "name": "friend"})),
            HashMap::from([(
                "a@b.example".to_string(),
                map(serde_json::json!({"name": "Ann"})),
            )]),
            MAX,
        )
        .unwrap();
        assert!(plan.per_recipient());
        let a =
            String::from_utf8(plan.render(Some("a@b.example"), "x@mta.example").unwrap()).unwrap();
        assert_eq!(
            a, "Subject: Hi Ann\r\n\r\nDear Ann, your code is X1.\r\n",
            "own values win"
        );
        let other =
            String::from_utf8(plan.render(Some("c@b.example"), "x@mta.example").unwrap()).unwrap();
        assert!(other.starts_with("Subject: Hi friend\r\n"), "{other}");
    }

    #[test]
    fn a_line_break_may_not_reach_a_header_but_may_reach_the_body() {
        let plan = Plan::compile(
            Some("Subject: {{ s }}\n\n{{ s }}\n"),
            None,
            map(serde_json::json!({"s": "a\r\nBcc: victim@x.example"})),
            HashMap::new(),
            MAX,
        )
        .unwrap();
        let e = plan.render(None, "x@mta.example").unwrap_err();
        assert_eq!(e.part, "content header");
        assert!(e.what.contains("line break"), "{e}");
        let body_only = Plan::compile(
            Some("Subject: x\n\n{{ s }}\n"),
            None,
            map(serde_json::json!({"s": "two\nlines"})),
            HashMap::new(),
            MAX,
        )
        .unwrap();
        assert!(body_only.render(None, "x@mta.example").is_ok());
    }

    #[test]
    fn errors_say_where() {
        let syntax = Plan::compile(
            Some("Subject: x\n\nline one\n{{ broken \n"),
            None,
            Default::default(),
            HashMap::new(),
            MAX,
        )
        .unwrap_err();
        assert_eq!(
            (syntax.part.as_str(), syntax.line),
            ("content body", Some(2))
        );
        let missing = Plan::compile(
            Some("Subject: x\n\n{{ nobody }}\n"),
            None,
            Default::default(),
            HashMap::new(),
            MAX,
        )
        .unwrap()
        .render(None, "x@mta.example")
        .unwrap_err();
        assert!(missing.what.contains("undefined"), "{missing}");
        assert_eq!(
            missing.to_string(),
            format!("template content body, line 1: {}", missing.what)
        );
    }

    #[test]
    fn the_builder_makes_a_mime_message() {
        let b = Builder {
            subject: Some("Grüße, {{ name }}".into()),
            text: Some("Hello {{ name }}".into()),
            html: Some("<p>Hello {{ name }}</p>".into()),
            from: Some("Shop <news@shop.example>".into()),
            headers: BTreeMap::from([("X-Campaign".to_string(), "c{{ n }}".to_string())]),
            ..Builder::default()
        };
        let plan = Plan::compile(
            None,
            Some(&b),
            map(serde_json::json!({"n": 7})),
            HashMap::from([(
                "a@b.example".to_string(),
                map(serde_json::json!({"name": "<Ann>"})),
            )]),
            MAX,
        )
        .unwrap();
        let out = plan.render(Some("a@b.example"), "x@mta.example").unwrap();
        let msg = mail_parser::MessageParser::default().parse(&out).unwrap();
        assert_eq!(msg.subject(), Some("Grüße, <Ann>"));
        assert_eq!(msg.body_text(0).unwrap(), "Hello <Ann>");
        assert_eq!(msg.body_html(0).unwrap(), "<p>Hello &lt;Ann&gt;</p>");
        assert_eq!(msg.message_id(), Some("x@mta.example"));
        let text = String::from_utf8_lossy(&out);
        assert!(text.contains("To: <a@b.example>\r\n"), "{text}");
        assert!(text.contains("X-Campaign: c7\r\n"), "{text}");
        assert!(text.contains("multipart/alternative"), "{text}");
        let bad = Builder {
            headers: BTreeMap::from([("Bad Name".to_string(), "x".to_string())]),
            text: Some("x".into()),
            ..Builder::default()
        };
        assert!(Plan::compile(None, Some(&bad), Default::default(), HashMap::new(), MAX).is_err());
    }

    #[test]
    fn a_template_that_runs_away_is_stopped() {
        let compile = |content: &str| {
            Plan::compile(Some(content), None, Default::default(), HashMap::new(), MAX).unwrap()
        };
        let endless = compile(
            "S: x\n\n{% for a in range(100000) %}{% for b in range(100000) %}{% endfor %}{% endfor %}",
        );
        let started = std::time::Instant::now();
        let e = endless.render(None, "m@x").unwrap_err();
        assert!(e.what.contains("fuel"), "{e}");
        assert!(started.elapsed() < std::time::Duration::from_secs(5));
        let huge = compile("S: x\n\n{{ 'x' * 10000000 }}");
        let e = huge.render(None, "m@x").unwrap_err();
        assert_eq!(e.what, format!("renders to more than {MAX} bytes"), "{e}");
    }

    const MAX: usize = 1 << 20;
}
