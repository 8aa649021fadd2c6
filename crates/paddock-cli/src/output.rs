//! Tables for people, JSON (the API's bodies) for programs.

use paddock_server::wire::{LeaseList, PoolList, SlotList};

/// Prints `value` as one line of JSON.
pub fn print_json<T: serde::Serialize>(value: &T) {
    match serde_json::to_string(value) {
        Ok(text) => println!("{text}"),
        Err(err) => eprintln!("paddock: could not print JSON: {err}"),
    }
}

/// Prints rows under a header, each column as wide as its widest cell.
fn table(header: &[&str], rows: &[Vec<String>]) {
    let mut widths: Vec<usize> = header.iter().map(|h| h.len()).collect();
    for row in rows {
        for (width, cell) in widths.iter_mut().zip(row) {
            *width = (*width).max(cell.len());
        }
    }
    let line = |cells: Vec<&str>| {
        let text: Vec<String> = cells
            .iter()
            .zip(&widths)
            .map(|(cell, width)| format!("{cell:<width$}"))
            .collect();
        println!("{}", text.join("  ").trim_end());
    };
    line(header.to_vec());
    for row in rows {
        line(row.iter().map(String::as_str).collect());
    }
}

/// `paddock pools`.
pub fn pools(list: &PoolList, json: bool) {
    if json {
        return print_json(list);
    }
    let rows: Vec<Vec<String>> = list
        .pools
        .iter()
        .map(|p| {
            vec![
                p.name.clone(),
                p.ready.to_string(),
                p.leased.to_string(),
                p.preparing.to_string(),
                format!("{}..{}", p.min_ready, p.max_size),
                p.reset.clone(),
                p.policy.clone().unwrap_or_else(|| "-".into()),
                if p.draining {
                    "draining".into()
                } else if p.backend_available {
                    "serving".into()
                } else {
                    "libvirtd away".into()
                },
            ]
        })
        .collect();
    table(
        &[
            "POOL",
            "READY",
            "LEASED",
            "PREPARING",
            "SIZE",
            "RESET",
            "POLICY",
            "STATE",
        ],
        &rows,
    );
}

/// `paddock slots POOL`.
pub fn slots(list: &SlotList, json: bool) {
    if json {
        return print_json(list);
    }
    let dash = || "-".to_owned();
    let rows: Vec<Vec<String>> = list
        .slots
        .iter()
        .map(|s| {
            vec![
                s.index.to_string(),
                s.state.clone(),
                s.lease.clone().unwrap_or_else(dash),
                s.tenant.clone().unwrap_or_else(dash),
                s.domain.clone(),
            ]
        })
        .collect();
    table(&["SLOT", "STATE", "LEASE", "TENANT", "DOMAIN"], &rows);
    if list.preparing > 0 {
        println!("({} more being made or reset)", list.preparing);
    }
}

/// `paddock leases`.
pub fn leases(list: &LeaseList, json: bool) {
    if json {
        return print_json(list);
    }
    let rows: Vec<Vec<String>> = list
        .leases
        .iter()
        .map(|l| {
            vec![
                l.id.clone(),
                l.pool.clone(),
                l.slot.to_string(),
                l.tenant.clone().unwrap_or_else(|| "-".into()),
                l.acquired_at.clone(),
            ]
        })
        .collect();
    table(&["LEASE", "POOL", "SLOT", "TENANT", "ACQUIRED"], &rows);
}
