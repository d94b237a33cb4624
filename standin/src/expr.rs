//! The expression language subset: condition expressions (comparisons, `BETWEEN`, `IN`, `AND`, `OR`,
//! `NOT`, parentheses, `attribute_exists`, `attribute_not_exists`, `attribute_type`, `begins_with`,
//! `size`), update expressions (`SET` with `+`, `-` and `if_not_exists`, `REMOVE`) and projection
//! expressions, on top-level attributes. Anything else is refused with a `ValidationException` that
//! names it, never evaluated wrongly.

use std::collections::HashMap;

use crate::value::{Item, Value, add_numbers, equal, order};

/// A refused expression: the message of the `ValidationException`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Invalid(pub String);

type Result<T> = std::result::Result<T, Invalid>;

fn invalid<T>(message: impl Into<String>) -> Result<T> {
    Err(Invalid(message.into()))
}

#[derive(Debug, Clone, PartialEq)]
enum Token {
    Name(String),
    Value(String),
    Word(String),
    Op(&'static str),
    Open,
    Close,
    Comma,
}

fn tokenize(text: &str) -> Result<Vec<Token>> {
    let bytes = text.as_bytes();
    let mut tokens = Vec::new();
    let mut i = 0;
    while i < bytes.len() {
        let c = bytes[i];
        let word_end = |from: usize| {
            let mut j = from;
            while j < bytes.len() && (bytes[j].is_ascii_alphanumeric() || bytes[j] == b'_') {
                j += 1;
            }
            j
        };
        match c {
            b' ' | b'\t' | b'\n' | b'\r' => i += 1,
            b'(' => {
                tokens.push(Token::Open);
                i += 1;
            }
            b')' => {
                tokens.push(Token::Close);
                i += 1;
            }
            b',' => {
                tokens.push(Token::Comma);
                i += 1;
            }
            b'+' | b'-' => {
                tokens.push(Token::Op(if c == b'+' { "+" } else { "-" }));
                i += 1;
            }
            b'=' => {
                tokens.push(Token::Op("="));
                i += 1;
            }
            b'<' | b'>' => {
                let next = bytes.get(i + 1).copied();
                let op = match (c, next) {
                    (b'<', Some(b'>')) => "<>",
                    (b'<', Some(b'=')) => "<=",
                    (b'>', Some(b'=')) => ">=",
                    (b'<', _) => "<",
                    _ => ">",
                };
                i += op.len();
                tokens.push(Token::Op(op));
            }
            b'#' | b':' => {
                let end = word_end(i + 1);
                if end == i + 1 {
                    return invalid(format!("an empty placeholder at offset {i} in {text:?}"));
                }
                let word = text[i..end].to_owned();
                tokens.push(if c == b'#' {
                    Token::Name(word)
                } else {
                    Token::Value(word)
                });
                i = end;
            }
            c if c.is_ascii_alphabetic() || c == b'_' => {
                let end = word_end(i);
                tokens.push(Token::Word(text[i..end].to_owned()));
                i = end;
            }
            b'.' | b'[' => {
                return invalid(format!(
                    "nested attribute paths are not supported by the stand-in ({text:?})"
                ));
            }
            _ => {
                return invalid(format!(
                    "unexpected character {:?} at offset {i} in {text:?}",
                    c as char
                ));
            }
        }
    }
    Ok(tokens)
}

/// A top-level attribute name, with `#` placeholders resolved.
fn resolve(token: &Token, names: &HashMap<String, String>) -> Result<String> {
    match token {
        Token::Name(placeholder) => names.get(placeholder).cloned().ok_or_else(|| {
            Invalid(format!(
                "An expression attribute name used in the document path is not defined; attribute name: {placeholder}"
            ))
        }),
        Token::Word(word) => Ok(word.clone()),
        other => invalid(format!("expected an attribute name, found {other:?}")),
    }
}

#[derive(Debug, Clone, PartialEq)]
enum Operand {
    Path(String),
    Value(Value),
    Size(String),
    IfNotExists(String, Box<Operand>),
    Arith(Box<Operand>, bool, Box<Operand>),
}

#[derive(Debug, Clone, PartialEq)]
enum Cond {
    Compare(Operand, &'static str, Operand),
    Between(Operand, Operand, Operand),
    In(Operand, Vec<Operand>),
    Exists(String, bool),
    Type(String, Operand),
    BeginsWith(Operand, Operand),
    And(Box<Cond>, Box<Cond>),
    Or(Box<Cond>, Box<Cond>),
    Not(Box<Cond>),
}

struct Parser<'a> {
    tokens: Vec<Token>,
    at: usize,
    names: &'a HashMap<String, String>,
    values: &'a HashMap<String, Value>,
    used_names: Vec<String>,
    used_values: Vec<String>,
}

impl<'a> Parser<'a> {
    fn new(
        text: &str,
        names: &'a HashMap<String, String>,
        values: &'a HashMap<String, Value>,
    ) -> Result<Parser<'a>> {
        Ok(Parser {
            tokens: tokenize(text)?,
            at: 0,
            names,
            values,
            used_names: Vec::new(),
            used_values: Vec::new(),
        })
    }

    fn peek(&self) -> Option<&Token> {
        self.tokens.get(self.at)
    }

    fn next(&mut self) -> Result<Token> {
        let token = self.tokens.get(self.at).cloned();
        self.at += 1;
        token.ok_or_else(|| Invalid("the expression ends too early".to_owned()))
    }

    fn keyword(&self, word: &str) -> bool {
        matches!(self.peek(), Some(Token::Word(w)) if w.eq_ignore_ascii_case(word))
    }

    fn expect(&mut self, token: &Token) -> Result<()> {
        let found = self.next()?;
        if &found == token {
            Ok(())
        } else {
            invalid(format!("expected {token:?}, found {found:?}"))
        }
    }

    fn path(&mut self) -> Result<String> {
        let token = self.next()?;
        if let Token::Name(placeholder) = &token {
            self.used_names.push(placeholder.clone());
        }
        resolve(&token, self.names)
    }

    fn operand(&mut self) -> Result<Operand> {
        let first = self.single()?;
        if let Some(Token::Op(op @ ("+" | "-"))) = self.peek() {
            let subtract = *op == "-";
            self.at += 1;
            let second = self.single()?;
            return Ok(Operand::Arith(Box::new(first), subtract, Box::new(second)));
        }
        Ok(first)
    }

    fn single(&mut self) -> Result<Operand> {
        match self.peek().cloned() {
            Some(Token::Value(placeholder)) => {
                self.at += 1;
                self.used_values.push(placeholder.clone());
                let value = self.values.get(&placeholder).cloned().ok_or_else(|| {
                    Invalid(format!(
                        "An expression attribute value used in expression is not defined; attribute value: {placeholder}"
                    ))
                })?;
                Ok(Operand::Value(value))
            }
            Some(Token::Word(w)) if w == "size" || w == "if_not_exists" => {
                self.at += 1;
                self.expect(&Token::Open)?;
                let path = self.path()?;
                let operand = if w == "size" {
                    Operand::Size(path)
                } else {
                    self.expect(&Token::Comma)?;
                    let fallback = self.operand()?;
                    Operand::IfNotExists(path, Box::new(fallback))
                };
                self.expect(&Token::Close)?;
                Ok(operand)
            }
            Some(Token::Word(w)) if self.tokens.get(self.at + 1) == Some(&Token::Open) => {
                invalid(format!("the function {w} is not supported by the stand-in"))
            }
            _ => Ok(Operand::Path(self.path()?)),
        }
    }

    fn condition(&mut self) -> Result<Cond> {
        let mut left = self.conjunction()?;
        while self.keyword("OR") {
            self.at += 1;
            let right = self.conjunction()?;
            left = Cond::Or(Box::new(left), Box::new(right));
        }
        Ok(left)
    }

    fn conjunction(&mut self) -> Result<Cond> {
        let mut left = self.negation()?;
        while self.keyword("AND") {
            self.at += 1;
            let right = self.negation()?;
            left = Cond::And(Box::new(left), Box::new(right));
        }
        Ok(left)
    }

    fn negation(&mut self) -> Result<Cond> {
        if self.keyword("NOT") {
            self.at += 1;
            return Ok(Cond::Not(Box::new(self.negation()?)));
        }
        self.primary()
    }

    fn primary(&mut self) -> Result<Cond> {
        if self.peek() == Some(&Token::Open) {
            self.at += 1;
            let inner = self.condition()?;
            self.expect(&Token::Close)?;
            return Ok(inner);
        }
        let function = match self.peek() {
            Some(Token::Word(w)) if self.tokens.get(self.at + 1) == Some(&Token::Open) => {
                Some(w.clone())
            }
            _ => None,
        };
        if let Some(function) = function.filter(|f| f != "size") {
            self.at += 2;
            let cond = match function.as_str() {
                "attribute_exists" => Cond::Exists(self.path()?, true),
                "attribute_not_exists" => Cond::Exists(self.path()?, false),
                "attribute_type" => {
                    let path = self.path()?;
                    self.expect(&Token::Comma)?;
                    Cond::Type(path, self.operand()?)
                }
                "begins_with" => {
                    let a = self.operand()?;
                    self.expect(&Token::Comma)?;
                    Cond::BeginsWith(a, self.operand()?)
                }
                other => {
                    return invalid(format!(
                        "the function {other} is not supported by the stand-in"
                    ));
                }
            };
            self.expect(&Token::Close)?;
            return Ok(cond);
        }
        let left = self.operand()?;
        if self.keyword("BETWEEN") {
            self.at += 1;
            let low = self.operand()?;
            if !self.keyword("AND") {
                return invalid("BETWEEN needs AND");
            }
            self.at += 1;
            let high = self.operand()?;
            return Ok(Cond::Between(left, low, high));
        }
        if self.keyword("IN") {
            self.at += 1;
            self.expect(&Token::Open)?;
            let mut list = vec![self.operand()?];
            while self.peek() == Some(&Token::Comma) {
                self.at += 1;
                list.push(self.operand()?);
            }
            self.expect(&Token::Close)?;
            return Ok(Cond::In(left, list));
        }
        match self.next()? {
            Token::Op(op @ ("=" | "<>" | "<" | "<=" | ">" | ">=")) => {
                let right = self.operand()?;
                Ok(Cond::Compare(left, op, right))
            }
            other => invalid(format!("expected a comparison, found {other:?}")),
        }
    }

    fn finish(&self) -> Result<()> {
        match self.peek() {
            None => Ok(()),
            Some(token) => invalid(format!(
                "unexpected {token:?} after the end of the expression"
            )),
        }
    }
}

fn evaluate(operand: &Operand, item: Option<&Item>) -> Result<Option<Value>> {
    Ok(match operand {
        Operand::Path(name) => item.and_then(|i| i.get(name)).cloned(),
        Operand::Value(v) => Some(v.clone()),
        Operand::Size(name) => item.and_then(|i| i.get(name)).and_then(|v| {
            let n = match v {
                Value::S(s) | Value::B(s) => s.len(),
                Value::Ss(x) | Value::Ns(x) | Value::Bs(x) => x.len(),
                Value::L(x) => x.len(),
                Value::M(x) => x.len(),
                _ => return None,
            };
            Some(Value::N(n.to_string()))
        }),
        Operand::IfNotExists(name, fallback) => match item.and_then(|i| i.get(name)) {
            Some(v) => Some(v.clone()),
            None => evaluate(fallback, item)?,
        },
        Operand::Arith(a, subtract, b) => {
            let (a, b) = (evaluate(a, item)?, evaluate(b, item)?);
            match (a, b) {
                (Some(Value::N(x)), Some(Value::N(y))) => Some(Value::N(
                    add_numbers(&x, &y, *subtract).ok_or_else(|| {
                        Invalid(format!(
                            "the stand-in adds integers only (within 128 bits): {x} and {y}"
                        ))
                    })?,
                )),
                (None, _) | (_, None) => {
                    return invalid(
                        "The provided expression refers to an attribute that does not exist in the item",
                    );
                }
                _ => {
                    return invalid(
                        "An operand in the update expression has an incorrect data type",
                    );
                }
            }
        }
    })
}

fn holds(cond: &Cond, item: Option<&Item>) -> Result<bool> {
    Ok(match cond {
        Cond::Compare(a, op, b) => {
            let (Some(a), Some(b)) = (evaluate(a, item)?, evaluate(b, item)?) else {
                return Ok(false);
            };
            match *op {
                "=" => equal(&a, &b),
                "<>" => !equal(&a, &b),
                _ => match order(&a, &b) {
                    None => false,
                    Some(o) => match *op {
                        "<" => o.is_lt(),
                        "<=" => o.is_le(),
                        ">" => o.is_gt(),
                        _ => o.is_ge(),
                    },
                },
            }
        }
        Cond::Between(x, low, high) => {
            let (Some(x), Some(low), Some(high)) = (
                evaluate(x, item)?,
                evaluate(low, item)?,
                evaluate(high, item)?,
            ) else {
                return Ok(false);
            };
            order(&x, &low).is_some_and(|o| o.is_ge())
                && order(&x, &high).is_some_and(|o| o.is_le())
        }
        Cond::In(x, list) => {
            let Some(x) = evaluate(x, item)? else {
                return Ok(false);
            };
            let mut found = false;
            for candidate in list {
                if evaluate(candidate, item)?.is_some_and(|c| equal(&x, &c)) {
                    found = true;
                }
            }
            found
        }
        Cond::Exists(name, wanted) => item.is_some_and(|i| i.contains_key(name)) == *wanted,
        Cond::Type(name, t) => match (item.and_then(|i| i.get(name)), evaluate(t, item)?) {
            (Some(v), Some(Value::S(t))) => v.type_name() == t,
            _ => false,
        },
        Cond::BeginsWith(a, b) => match (evaluate(a, item)?, evaluate(b, item)?) {
            (Some(Value::S(a)), Some(Value::S(b))) => a.starts_with(&b),
            _ => false,
        },
        Cond::And(a, b) => holds(a, item)? && holds(b, item)?,
        Cond::Or(a, b) => holds(a, item)? || holds(b, item)?,
        Cond::Not(a) => !holds(a, item)?,
    })
}

/// Placeholders a request defines but none of its expressions use are refused by DynamoDB.
fn check_all_used(
    names: &HashMap<String, String>,
    values: &HashMap<String, Value>,
    used_names: &[String],
    used_values: &[String],
) -> Result<()> {
    if let Some(unused) = names.keys().find(|n| !used_names.contains(n)) {
        return invalid(format!(
            "Value provided in ExpressionAttributeNames unused in expressions: keys: {{{unused}}}"
        ));
    }
    if let Some(unused) = values.keys().find(|v| !used_values.contains(v)) {
        return invalid(format!(
            "Value provided in ExpressionAttributeValues unused in expressions: keys: {{{unused}}}"
        ));
    }
    Ok(())
}

/// One action of an update expression.
#[derive(Debug, Clone, PartialEq)]
enum Action {
    Set(String, Operand),
    Remove(String),
}

/// The expressions of one request, parsed together (so unused placeholders are found).
#[derive(Debug, Clone, Default)]
pub struct Expressions {
    condition: Option<Cond>,
    update: Vec<Action>,
    projection: Option<Vec<String>>,
    key_condition: Option<Cond>,
}

/// The texts of one request's expressions and its placeholders.
#[derive(Debug, Clone, Copy, Default)]
pub struct Texts<'a> {
    /// `ConditionExpression` (also a Query's `FilterExpression` is refused elsewhere).
    pub condition: Option<&'a str>,
    /// `UpdateExpression`.
    pub update: Option<&'a str>,
    /// `ProjectionExpression`.
    pub projection: Option<&'a str>,
    /// `KeyConditionExpression`.
    pub key_condition: Option<&'a str>,
}

impl Expressions {
    /// Parses a request's expressions with its `ExpressionAttributeNames` and `...Values`.
    pub fn parse(
        texts: Texts<'_>,
        names: &HashMap<String, String>,
        values: &HashMap<String, Value>,
    ) -> std::result::Result<Expressions, Invalid> {
        let mut used_names = Vec::new();
        let mut used_values = Vec::new();
        let mut out = Expressions::default();
        for (text, slot) in [
            (texts.condition, &mut out.condition),
            (texts.key_condition, &mut out.key_condition),
        ] {
            if let Some(text) = text {
                let mut parser = Parser::new(text, names, values)?;
                *slot = Some(parser.condition()?);
                parser.finish()?;
                used_names.append(&mut parser.used_names);
                used_values.append(&mut parser.used_values);
            }
        }
        if let Some(text) = texts.update {
            let mut parser = Parser::new(text, names, values)?;
            while parser.peek().is_some() {
                let clause = match parser.next()? {
                    Token::Word(w) => w.to_ascii_uppercase(),
                    other => return invalid(format!("expected SET or REMOVE, found {other:?}")),
                };
                loop {
                    match clause.as_str() {
                        "SET" => {
                            let path = parser.path()?;
                            parser.expect(&Token::Op("="))?;
                            out.update.push(Action::Set(path, parser.operand()?));
                        }
                        "REMOVE" => out.update.push(Action::Remove(parser.path()?)),
                        other => {
                            return invalid(format!(
                                "the update clause {other} is not supported by the stand-in (SET and REMOVE are)"
                            ));
                        }
                    }
                    if parser.peek() == Some(&Token::Comma) {
                        parser.at += 1;
                    } else {
                        break;
                    }
                }
            }
            used_names.append(&mut parser.used_names);
            used_values.append(&mut parser.used_values);
        }
        if let Some(text) = texts.projection {
            let mut parser = Parser::new(text, names, values)?;
            let mut list = vec![parser.path()?];
            while parser.peek() == Some(&Token::Comma) {
                parser.at += 1;
                list.push(parser.path()?);
            }
            parser.finish()?;
            used_names.append(&mut parser.used_names);
            out.projection = Some(list);
        }
        check_all_used(names, values, &used_names, &used_values)?;
        Ok(out)
    }

    /// Whether the condition holds for the stored item (`None`: no item); true without a condition.
    pub fn condition_holds(&self, item: Option<&Item>) -> std::result::Result<bool, Invalid> {
        match &self.condition {
            Some(cond) => holds(cond, item),
            None => Ok(true),
        }
    }

    /// The key condition, if it is `partition = value`: the attribute and the value.
    pub fn partition_equals(&self) -> Option<(&str, &Value)> {
        match &self.key_condition {
            Some(Cond::Compare(Operand::Path(name), "=", Operand::Value(v))) => {
                Some((name.as_str(), v))
            }
            _ => None,
        }
    }

    /// Whether there was a key condition at all.
    pub fn has_key_condition(&self) -> bool {
        self.key_condition.is_some()
    }

    /// Applies the update expression to `item` (the stored item, or the key alone when absent); returns
    /// the names it set.
    pub fn apply_update(&self, item: &mut Item) -> std::result::Result<Vec<String>, Invalid> {
        let before = item.clone();
        let mut set = Vec::new();
        for action in &self.update {
            match action {
                Action::Set(name, operand) => {
                    // Every operand reads the item as it was before the update.
                    let value = evaluate(operand, Some(&before))?.ok_or_else(|| {
                        Invalid(
                            "The provided expression refers to an attribute that does not exist in the item"
                                .to_owned(),
                        )
                    })?;
                    item.insert(name.clone(), value);
                    set.push(name.clone());
                }
                Action::Remove(name) => {
                    item.remove(name);
                }
            }
        }
        Ok(set)
    }

    /// The item with only the projected attributes (all of it without a projection).
    pub fn project(&self, item: &Item) -> Item {
        match &self.projection {
            None => item.clone(),
            Some(names) => item
                .iter()
                .filter(|(k, _)| names.contains(k))
                .map(|(k, v)| (k.clone(), v.clone()))
                .collect(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn n(x: &str) -> Value {
        Value::N(x.to_owned())
    }
    fn s(x: &str) -> Value {
        Value::S(x.to_owned())
    }

    fn parse(
        condition: Option<&str>,
        update: Option<&str>,
        names: &[(&str, &str)],
        values: &[(&str, Value)],
    ) -> std::result::Result<Expressions, Invalid> {
        let names = names
            .iter()
            .map(|(a, b)| ((*a).to_owned(), (*b).to_owned()))
            .collect();
        let values = values
            .iter()
            .map(|(a, b)| ((*a).to_owned(), b.clone()))
            .collect();
        Expressions::parse(
            Texts {
                condition,
                update,
                ..Texts::default()
            },
            &names,
            &values,
        )
    }

    #[test]
    fn the_replicators_lww_condition() {
        let e = parse(
            Some("attribute_not_exists(#v) OR #v < :v OR (#v = :v AND #o <= :o)"),
            None,
            &[("#v", "rep_version"), ("#o", "rep_origin")],
            &[(":v", n("100")), (":o", s("us-east-1"))],
        )
        .expect("parses");
        let item = |v: Value, o: Value| -> Item {
            [("rep_version".to_owned(), v), ("rep_origin".to_owned(), o)].into()
        };
        assert!(e.condition_holds(None).expect("evaluates"));
        assert!(
            e.condition_holds(Some(&item(n("99"), s("z"))))
                .expect("evaluates")
        );
        assert!(
            e.condition_holds(Some(&item(n("100"), s("us-east-1"))))
                .expect("evaluates")
        );
        assert!(
            e.condition_holds(Some(&item(n("100"), s("a"))))
                .expect("evaluates")
        );
        assert!(
            !e.condition_holds(Some(&item(n("100"), s("us-west-2"))))
                .expect("evaluates")
        );
        assert!(
            !e.condition_holds(Some(&item(n("101"), s("a"))))
                .expect("evaluates")
        );
        // Across types a comparison is false: a string version is neither older nor equal.
        assert!(
            !e.condition_holds(Some(&item(s("1"), s("a"))))
                .expect("evaluates")
        );
    }

    #[test]
    fn the_lease_updates() {
        let e = parse(
            Some("#o = :me AND #c = :c"),
            Some("SET #e = :e, #c = #c + :one REMOVE #h"),
            &[
                ("#o", "owner"),
                ("#c", "counter"),
                ("#e", "expires"),
                ("#h", "handoff_to"),
            ],
            &[
                (":me", s("w1")),
                (":c", n("4")),
                (":e", n("99")),
                (":one", n("1")),
            ],
        )
        .expect("parses");
        let mut item: Item = [
            ("owner".to_owned(), s("w1")),
            ("counter".to_owned(), n("4")),
            ("handoff_to".to_owned(), s("w2")),
        ]
        .into();
        assert!(e.condition_holds(Some(&item)).expect("evaluates"));
        let set = e.apply_update(&mut item).expect("applies");
        assert_eq!(set, ["expires", "counter"]);
        assert_eq!(item.get("counter"), Some(&n("5")));
        assert_eq!(item.get("expires"), Some(&n("99")));
        assert!(!item.contains_key("handoff_to"));

        let fence = parse(
            None,
            Some("SET #n = if_not_exists(#n, :start) + :one"),
            &[("#n", "fence")],
            &[(":start", n("7")), (":one", n("1"))],
        )
        .expect("parses");
        let mut row = Item::new();
        fence.apply_update(&mut row).expect("applies");
        assert_eq!(row.get("fence"), Some(&n("8")));
        fence.apply_update(&mut row).expect("applies");
        assert_eq!(row.get("fence"), Some(&n("9")));
    }

    #[test]
    fn bad_expressions_are_refused_with_a_reason() {
        let unused = parse(
            Some("#a = :a"),
            None,
            &[("#a", "a"), ("#b", "b")],
            &[(":a", n("1"))],
        );
        assert!(unused.expect_err("refused").0.contains("unused"));
        let undefined = parse(Some("#a = :x"), None, &[("#a", "a")], &[]);
        assert!(undefined.expect_err("refused").0.contains(":x"));
        let nested = parse(Some("a.b = :a"), None, &[], &[(":a", n("1"))]);
        assert!(nested.expect_err("refused").0.contains("nested"));
        let function = parse(Some("contains(a, :a)"), None, &[], &[(":a", n("1"))]);
        assert!(function.expect_err("refused").0.contains("contains"));
        let add = parse(None, Some("ADD a :a"), &[], &[(":a", n("1"))]);
        assert!(add.expect_err("refused").0.contains("ADD"));
        let trailing = parse(Some("a = :a b"), None, &[], &[(":a", n("1"))]);
        assert!(trailing.is_err());
    }

    #[test]
    fn between_in_not_and_functions() {
        let e = parse(
            Some("NOT (#a BETWEEN :lo AND :hi) AND #b IN (:x, :y) AND begins_with(#c, :p) AND size(#c) > :lo AND attribute_type(#b, :t)"),
            None,
            &[("#a", "a"), ("#b", "b"), ("#c", "c")],
            &[(":lo", n("1")), (":hi", n("3")), (":x", s("x")), (":y", s("y")), (":p", s("pre")), (":t", s("S"))],
        )
        .expect("parses");
        let item: Item = [
            ("a".to_owned(), n("5")),
            ("b".to_owned(), s("y")),
            ("c".to_owned(), s("prefix")),
        ]
        .into();
        assert!(e.condition_holds(Some(&item)).expect("evaluates"));
        let inside: Item = [
            ("a".to_owned(), n("2")),
            ("b".to_owned(), s("y")),
            ("c".to_owned(), s("prefix")),
        ]
        .into();
        assert!(!e.condition_holds(Some(&inside)).expect("evaluates"));
    }
}
