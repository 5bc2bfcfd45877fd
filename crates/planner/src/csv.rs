//! A small RFC 4180 CSV reader (quoted fields, doubled quotes, newlines in quotes):
//! enough for the published-runs file without another dependency.

use crate::error::PlanError;

/// Parse CSV text into records; `file` names the source in errors.
pub fn parse(text: &str, file: &str) -> Result<Vec<Vec<String>>, PlanError> {
    let mut rows = Vec::new();
    let mut row = Vec::new();
    let mut field = String::new();
    let mut quoted = false;
    let mut line = 1usize;
    let mut start_line = 1usize;
    let mut chars = text.chars().peekable();
    while let Some(c) = chars.next() {
        if quoted {
            match c {
                '"' if chars.peek() == Some(&'"') => {
                    chars.next();
                    field.push('"');
                }
                '"' => quoted = false,
                '\n' => {
                    line += 1;
                    field.push(c);
                }
                _ => field.push(c),
            }
            continue;
        }
        match c {
            '"' if field.is_empty() => {
                quoted = true;
                start_line = line;
            }
            '"' => {
                return Err(PlanError::Csv {
                    file: file.to_string(),
                    line,
                    reason: "quote inside an unquoted field".to_string(),
                })
            }
            ',' => row.push(std::mem::take(&mut field)),
            '\r' => {}
            '\n' => {
                line += 1;
                row.push(std::mem::take(&mut field));
                if !(row.len() == 1 && row[0].is_empty()) {
                    rows.push(std::mem::take(&mut row));
                }
                row.clear();
            }
            _ => field.push(c),
        }
    }
    if quoted {
        return Err(PlanError::Csv {
            file: file.to_string(),
            line: start_line,
            reason: "unterminated quoted field".to_string(),
        });
    }
    if !field.is_empty() || !row.is_empty() {
        row.push(field);
        rows.push(row);
    }
    Ok(rows)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quotes_commas_and_newlines() {
        let rows = parse("a,b,c\n1,\"x, \"\"y\"\"\nz\",3\n", "t.csv").unwrap();
        assert_eq!(
            rows,
            vec![vec!["a", "b", "c"], vec!["1", "x, \"y\"\nz", "3"]]
        );
        let e = parse("a,b\n1,\"open\n", "t.csv").unwrap_err().to_string();
        assert!(
            e.contains("t.csv: line 2") && e.contains("unterminated"),
            "{e}"
        );
    }
}
