//! Go's `text/tabwriter` as fleetctl configured it: `Init(w, minwidth 0, tabwidth 8, padding 1,
//! padchar '\t', flags 0)`.
//!
//! ```
//! use fleetctl::tabwriter::format_go;
//! assert_eq!(format_go("UNIT\tSTATE\nhello.service\tlaunched\n"),
//!            "UNIT\t\tSTATE\nhello.service\tlaunched\n");
//! ```
//!
//! Hand-written on purpose: the Rust `tabwriter` crate pads with spaces (its `padding` is a
//! count of spaces) and sizes columns differently, so it cannot reproduce Go's tab-padded output
//! byte for byte, and scripts that parse `fleetctl list-*` output with `cut -f`/`awk -F'\t'` rely
//! on fleet's exact bytes. This is a port of Go's algorithm (`format`/`writeLines`/`writePadding`)
//! for the subset fleetctl uses: cells terminated by `\t`, lines by `\n`, left alignment, no
//! escapes, no `\v`/`\f`. Cell widths count Unicode scalar values, as Go counts runes.

/// The parameters of Go's `tabwriter.Writer.Init` that matter with a tab pad character.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Config {
    pub minwidth: usize,
    pub tabwidth: usize,
    pub padding: usize,
}

/// fleetctl's configuration.
pub const FLEETCTL: Config = Config {
    minwidth: 0,
    tabwidth: 8,
    padding: 1,
};

/// Formats `text` as Go's tabwriter with fleetctl's configuration would on `Flush`.
pub fn format_go(text: &str) -> String {
    format_with(text, FLEETCTL)
}

/// Formats `text` as Go's tabwriter with pad character `\t` and the given configuration.
pub fn format_with(text: &str, config: Config) -> String {
    // Each line is its cells; every cell but the last was terminated by a tab. The text after the
    // last newline is a line of its own (empty when the text ends in a newline), as in Go.
    let lines: Vec<Vec<&str>> = text.split('\n').map(|l| l.split('\t').collect()).collect();
    let mut out = String::with_capacity(text.len() * 2);
    let mut widths = Vec::new();
    format_block(&lines, 0, lines.len(), &mut widths, config, &mut out);
    out
}

fn cell_width(cell: &str) -> usize {
    cell.chars().count()
}

/// Go's `Writer.format`: finds the blocks of consecutive lines that have a cell in the next
/// column, sizes that column per block and recurses to the right.
fn format_block(
    lines: &[Vec<&str>],
    mut line0: usize,
    line1: usize,
    widths: &mut Vec<usize>,
    config: Config,
    out: &mut String,
) {
    let column = widths.len();
    let mut this = line0;
    while this < line1 {
        // The last cell of a line is not tab-terminated and belongs to no column.
        if column + 1 >= lines[this].len() {
            this += 1;
            continue;
        }
        write_lines(lines, line0, this, widths, config, out);
        line0 = this;
        let mut width = config.minwidth;
        while this < line1 && column + 1 < lines[this].len() {
            width = width.max(cell_width(lines[this][column]) + config.padding);
            this += 1;
        }
        widths.push(width);
        format_block(lines, line0, this, widths, config, out);
        widths.pop();
        line0 = this;
    }
    write_lines(lines, line0, line1, widths, config, out);
}

/// Go's `Writer.writeLines` with left alignment and tab padding.
fn write_lines(
    lines: &[Vec<&str>],
    line0: usize,
    line1: usize,
    widths: &[usize],
    config: Config,
    out: &mut String,
) {
    for (i, line) in lines.iter().enumerate().take(line1).skip(line0) {
        for (j, cell) in line.iter().enumerate() {
            out.push_str(cell);
            if j < widths.len() {
                write_padding(cell_width(cell), widths[j], config, out);
            }
        }
        // The last line has no newline after it (Go writes the outstanding text only).
        if i + 1 < lines.len() {
            out.push('\n');
        }
    }
}

/// Go's `writePadding` for pad character `\t`: the cell is widened to the next multiple of the
/// tab width and filled with as many tabs as it takes to get there.
fn write_padding(text_width: usize, cell_width: usize, config: Config, out: &mut String) {
    if config.tabwidth == 0 {
        return;
    }
    let cell_width = cell_width.div_ceil(config.tabwidth) * config.tabwidth;
    let n = cell_width.saturating_sub(text_width);
    for _ in 0..n.div_ceil(config.tabwidth) {
        out.push('\t');
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Expected bytes built by hand from Go's rules: column width = widest cell + 1, rounded up
    /// to a multiple of 8; each cell is followed by ceil((width - len) / 8) tabs.
    #[test]
    fn golden_tables() {
        let cases: &[(&str, &str)] = &[
            // widths: col0 max("UNIT"=4, "a.service"=9)+1 = 10 -> 16. "UNIT": 12 -> 2 tabs;
            // "a.service": 7 -> 1 tab.
            (
                "UNIT\tSTATE\na.service\tlaunched\n",
                "UNIT\t\tSTATE\na.service\tlaunched\n",
            ),
            // A 7-character cell + padding 1 = 8 exactly: one tab for it, one for "A" (7 -> 1).
            (
                "A\tB\nabcdefg\tc\n",
                "A\tB\nabcdefg\tc\n",
            ),
            // An 8-character cell needs width 9 -> 16: "abcdefgh" gets 1 tab (8 left -> 1),
            // "A" gets 2 tabs (15 left).
            (
                "A\tB\nabcdefgh\tc\n",
                "A\t\tB\nabcdefgh\tc\n",
            ),
            // Three columns of different widths; column 1 sized independently of column 0.
            // col0: max(4, 13, 24)+1 = 25 -> 32; col1: max(7, 1, 11)+1 = 12 -> 16.
            (
                "UNIT\tMACHINE\tACTIVE\nhello.service\t-\tinactive\nsome-very-long-name.path\t3b5e0f21...\tactive\n",
                "UNIT\t\t\t\tMACHINE\t\tACTIVE\nhello.service\t\t\t-\t\tinactive\nsome-very-long-name.path\t3b5e0f21...\tactive\n",
            ),
            // Empty cells are padded like any other (0 wide: a full cell of tabs).
            (
                "A\t\tC\nxx\tyyyyyyyyyyyy\tz\n",
                "A\t\t\tC\nxx\tyyyyyyyyyyyy\tz\n",
            ),
            // A line without tabs ends the column block: the lines after it are sized apart
            // (one block would give "c" two tabs).
            (
                "aaaaaaaaaaaa\tb\nbreak\nc\td\n",
                "aaaaaaaaaaaa\tb\nbreak\nc\td\n",
            ),
            // Only the legend: columns sized by the header alone.
            ("MACHINE\tIP\tMETADATA\n", "MACHINE\tIP\tMETADATA\n"),
            // Nothing at all.
            ("", ""),
            // Unicode counts as one column per scalar value, as Go counts runes.
            ("é\tx\nabcdefgh\ty\n", "é\t\tx\nabcdefgh\ty\n"),
        ];
        for (input, expected) in cases {
            assert_eq!(&format_go(input), expected, "input {input:?}");
        }
    }

    /// Columns where each non-first cell starts once tabs are expanded to stops of 8.
    fn cell_starts(line: &str) -> Vec<usize> {
        let (mut col, mut at_start, mut starts) = (0, true, Vec::new());
        for c in line.chars() {
            if c == '\t' {
                col = (col / 8 + 1) * 8;
                at_start = true;
            } else {
                if at_start {
                    starts.push(col);
                }
                at_start = false;
                col += 1;
            }
        }
        starts
    }

    #[test]
    fn every_column_starts_on_the_same_tab_stop() {
        let input = "UNIT\tHASH\tDSTATE\tSTATE\tTARGET\n\
                     a.service\t1c6fb6f\tlaunched\tlaunched\t113f16a7.../172.17.8.103\n\
                     longer-name@1.service\te55c0ae\tinactive\t-\t-\n";
        let out = format_go(input);
        let starts: Vec<Vec<usize>> = out.lines().map(cell_starts).collect();
        assert_eq!(starts.len(), 3);
        assert!(starts.iter().all(|s| s.len() == 5), "{starts:?}");
        assert!(starts.iter().flatten().all(|s| s % 8 == 0), "{starts:?}");
        assert!(starts.windows(2).all(|w| w[0] == w[1]), "{starts:?}");
        // Removing the padding gives the cells back.
        for (line, orig) in out.lines().zip(input.lines()) {
            let cells: Vec<&str> = line.split('\t').filter(|c| !c.is_empty()).collect();
            assert_eq!(cells, orig.split('\t').collect::<Vec<_>>());
        }
    }

    #[test]
    fn text_without_final_newline_keeps_it_unterminated() {
        assert_eq!(format_go("a\tb\ncc\td"), "a\tb\ncc\td");
    }
}
