//! The borderless tables every command prints.

use comfy_table::{Table, presets::NOTHING};

/// A borderless table for terminal summaries.
pub fn table(header: &[&str]) -> Table {
    let mut table = Table::new();
    table.load_style(NOTHING).set_header(header.to_vec());
    table
}

/// Prints a table without the padding comfy-table leaves at the end of each line.
pub fn print_table(table: &Table) {
    for line in table.lines() {
        println!("{}", line.trim_end());
    }
}
