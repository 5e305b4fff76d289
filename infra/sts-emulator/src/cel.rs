//! The part of CEL that Credential Access Boundaries on Cloud Storage use:
//! `resource.name` and the list-prefix attribute compared with `==`, `!=`
//! or `.startsWith(…)`, combined with `&&`, `||` and parentheses. Anything
//! else is refused when the boundary is parsed, as Google refuses
//! conditions it cannot evaluate.

/// What a condition can ask about a request.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Subject {
    /// `resource.name`: `projects/_/buckets/B/objects/NAME` for an object
    /// request, `projects/_/buckets/B` for a list.
    ResourceName,
    /// `api.getAttribute('storage.googleapis.com/objectListPrefix', '')`.
    ListPrefix,
}

/// A parsed condition.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Expr {
    /// Both hold.
    And(Box<Expr>, Box<Expr>),
    /// Either holds.
    Or(Box<Expr>, Box<Expr>),
    /// `subject == 'literal'`.
    Equals(Subject, String),
    /// `subject != 'literal'`.
    NotEquals(Subject, String),
    /// `subject.startsWith('literal')`.
    StartsWith(Subject, String),
}

/// The request a condition is evaluated on.
#[derive(Clone, Debug)]
pub struct Request<'a> {
    /// `resource.name`.
    pub resource_name: &'a str,
    /// The list prefix (empty for anything but a list).
    pub list_prefix: &'a str,
}

/// A condition the stand-in cannot parse.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("condition {expression:?}: {reason} at byte {at}")]
pub struct CelError {
    /// The expression.
    pub expression: String,
    /// What was expected.
    pub reason: String,
    /// Where.
    pub at: usize,
}

impl Expr {
    /// Parses `expression`.
    pub fn parse(expression: &str) -> Result<Self, CelError> {
        let mut p = Parser {
            text: expression,
            pos: 0,
        };
        let e = p.or()?;
        p.skip_ws();
        if p.pos != p.text.len() {
            return Err(p.error("unexpected text"));
        }
        Ok(e)
    }

    /// Whether the condition holds for `request`.
    pub fn eval(&self, request: &Request<'_>) -> bool {
        let value = |s: &Subject| match s {
            Subject::ResourceName => request.resource_name,
            Subject::ListPrefix => request.list_prefix,
        };
        match self {
            Expr::And(a, b) => a.eval(request) && b.eval(request),
            Expr::Or(a, b) => a.eval(request) || b.eval(request),
            Expr::Equals(s, lit) => value(s) == lit,
            Expr::NotEquals(s, lit) => value(s) != lit,
            Expr::StartsWith(s, lit) => value(s).starts_with(lit.as_str()),
        }
    }

    /// Every string literal in the condition (what it names).
    pub fn literals(&self) -> Vec<String> {
        match self {
            Expr::And(a, b) | Expr::Or(a, b) => {
                let mut v = a.literals();
                v.extend(b.literals());
                v
            }
            Expr::Equals(_, l) | Expr::NotEquals(_, l) | Expr::StartsWith(_, l) => vec![l.clone()],
        }
    }
}

const RESOURCE_NAME: &str = "resource.name";
const LIST_PREFIX: &str = "api.getAttribute(";
const LIST_PREFIX_ATTRIBUTE: &str = "storage.googleapis.com/objectListPrefix";

struct Parser<'a> {
    text: &'a str,
    pos: usize,
}

impl Parser<'_> {
    fn error(&self, reason: &str) -> CelError {
        CelError {
            expression: self.text.to_owned(),
            reason: reason.to_owned(),
            at: self.pos,
        }
    }

    fn rest(&self) -> &str {
        &self.text[self.pos..]
    }

    fn skip_ws(&mut self) {
        let trimmed = self.rest().trim_start();
        self.pos = self.text.len() - trimmed.len();
    }

    fn eat(&mut self, token: &str) -> bool {
        self.skip_ws();
        if self.rest().starts_with(token) {
            self.pos += token.len();
            true
        } else {
            false
        }
    }

    fn expect(&mut self, token: &str) -> Result<(), CelError> {
        if self.eat(token) {
            Ok(())
        } else {
            Err(self.error(&format!("expected `{token}`")))
        }
    }

    fn or(&mut self) -> Result<Expr, CelError> {
        let mut left = self.and()?;
        while self.eat("||") {
            left = Expr::Or(Box::new(left), Box::new(self.and()?));
        }
        Ok(left)
    }

    fn and(&mut self) -> Result<Expr, CelError> {
        let mut left = self.atom()?;
        while self.eat("&&") {
            left = Expr::And(Box::new(left), Box::new(self.atom()?));
        }
        Ok(left)
    }

    fn atom(&mut self) -> Result<Expr, CelError> {
        if self.eat("(") {
            let e = self.or()?;
            self.expect(")")?;
            return Ok(e);
        }
        let subject = self.subject()?;
        if self.eat(".startsWith(") {
            let lit = self.string()?;
            self.expect(")")?;
            return Ok(Expr::StartsWith(subject, lit));
        }
        if self.eat("==") {
            return Ok(Expr::Equals(subject, self.string()?));
        }
        if self.eat("!=") {
            return Ok(Expr::NotEquals(subject, self.string()?));
        }
        Err(self.error("expected `.startsWith(…)`, `==` or `!=`"))
    }

    fn subject(&mut self) -> Result<Subject, CelError> {
        if self.eat(RESOURCE_NAME) {
            return Ok(Subject::ResourceName);
        }
        if self.eat(LIST_PREFIX) {
            let attribute = self.string()?;
            if attribute != LIST_PREFIX_ATTRIBUTE {
                return Err(self.error(&format!("unknown attribute {attribute:?}")));
            }
            self.expect(",")?;
            let default = self.string()?;
            if !default.is_empty() {
                return Err(self.error("the attribute's default must be ''"));
            }
            self.expect(")")?;
            return Ok(Subject::ListPrefix);
        }
        Err(self.error(&format!(
            "expected `{RESOURCE_NAME}` or `api.getAttribute('{LIST_PREFIX_ATTRIBUTE}', '')`"
        )))
    }

    /// A single- or double-quoted literal without escapes.
    fn string(&mut self) -> Result<String, CelError> {
        self.skip_ws();
        let quote = match self.rest().chars().next() {
            Some(q @ ('\'' | '"')) => q,
            _ => return Err(self.error("expected a string literal")),
        };
        let body = &self.rest()[1..];
        let Some(end) = body.find(quote) else {
            return Err(self.error("unterminated string literal"));
        };
        let lit = body[..end].to_owned();
        if lit.contains('\\') {
            return Err(self.error("escapes in string literals are not supported"));
        }
        self.pos += end + 2;
        Ok(lit)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn object(name: &str) -> String {
        format!("projects/_/buckets/b/objects/{name}")
    }

    #[test]
    fn conditions_parse_and_evaluate() {
        let e = Expr::parse(
            "resource.name.startsWith('projects/_/buckets/b/objects/sessions/A/') || api.getAttribute('storage.googleapis.com/objectListPrefix', '').startsWith('sessions/A/')",
        )
        .unwrap();
        let on = |name: &str, prefix: &str| {
            e.eval(&Request {
                resource_name: name,
                list_prefix: prefix,
            })
        };
        assert!(on(&object("sessions/A/state.json"), ""));
        assert!(!on(&object("sessions/B/state.json"), ""));
        assert!(!on(&object("sessions/AB/state.json"), ""));
        assert!(on("projects/_/buckets/b", "sessions/A/workspace/"));
        assert!(!on("projects/_/buckets/b", "sessions/"));
        assert!(!on("projects/_/buckets/b", ""));

        let e = Expr::parse("(resource.name == \"x\") && resource.name != 'y'").unwrap();
        assert!(e.eval(&Request {
            resource_name: "x",
            list_prefix: ""
        }));
        assert_eq!(e.literals(), vec!["x", "y"]);
    }

    #[test]
    fn what_is_not_understood_is_refused() {
        for bad in [
            "",
            "true",
            "resource.type == 'x'",
            "resource.name.endsWith('x')",
            "resource.name.startsWith('x'",
            "resource.name == 'x' |",
            "resource.name == 'a\\'b'",
            "api.getAttribute('other', '') == 'x'",
            "api.getAttribute('storage.googleapis.com/objectListPrefix', 'd') == 'x'",
            "resource.name == 'x' extra",
        ] {
            assert!(Expr::parse(bad).is_err(), "{bad:?} accepted");
        }
    }
}
