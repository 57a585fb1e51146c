//! Plain-text tables for people: columns padded to their widest cell, two
//! spaces apart, no trailing blanks.

/// Renders `rows` (the first is the header), one line each.
pub fn render(rows: &[Vec<String>]) -> String {
    let columns = rows.iter().map(Vec::len).max().unwrap_or(0);
    let mut widths = vec![0usize; columns];
    for row in rows {
        for (w, cell) in widths.iter_mut().zip(row) {
            *w = (*w).max(cell.chars().count());
        }
    }
    let mut out = String::new();
    for row in rows {
        let cells: Vec<String> = row.iter().zip(&widths).map(|(c, &w)| format!("{c:<w$}")).collect();
        out.push_str(cells.join("  ").trim_end());
        out.push('\n');
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn columns_line_up() {
        let rows = vec![
            vec!["TOPIC".to_string(), "LAG".into()],
            vec!["orders".into(), "7".into()],
            vec!["t".into(), "".into()],
        ];
        assert_eq!(render(&rows), "TOPIC   LAG\norders  7\nt\n");
        assert_eq!(render(&[]), "");
    }
}
