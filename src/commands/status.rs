//! `airlock status`: what a region's coordinators know — leader, pools, tasks, documents (with
//! their tenants) and the published egress IP sets.

use std::process::ExitCode;

use serde_json::Value;

#[derive(Debug, clap::Args)]
pub struct Args {
    #[command(flatten)]
    region: super::CoordinatorArgs,
    /// Print the coordinator's JSON as it is.
    #[arg(long)]
    json: bool,
}

pub async fn run(args: Args) -> anyhow::Result<ExitCode> {
    let client = args.region.client()?;
    let status = match client.get("/v1/status").await {
        Ok(status) => status,
        Err(err) => {
            eprintln!("error: {err}");
            return Ok(ExitCode::from(2));
        }
    };
    if args.json {
        println!("{}", serde_json::to_string_pretty(&status)?);
        return Ok(ExitCode::SUCCESS);
    }
    print!("{}", render(&status));
    Ok(ExitCode::SUCCESS)
}

/// The status as an operator reads it.
pub fn render(status: &Value) -> String {
    let mut out = String::new();
    let cluster = &status["cluster"];
    out.push_str(&format!(
        "region {}   this coordinator: {} {} (term {})   leader: {}\n",
        status["region"].as_str().unwrap_or("?"),
        cluster["id"],
        cluster["role"].as_str().unwrap_or("?"),
        cluster["term"],
        match &cluster["leader"] {
            Value::Null => "none (election under way)".to_owned(),
            leader => leader.to_string(),
        }
    ));
    if let Some(voters) = cluster["voters"].as_object() {
        let members: Vec<String> = voters
            .iter()
            .map(|(id, addr)| format!("{id}@{}", addr.as_str().unwrap_or("?")))
            .collect();
        out.push_str(&format!("members: {}\n", members.join(", ")));
    }
    out.push_str("\npools\n");
    for pool in status["pools"].as_array().into_iter().flatten() {
        out.push_str(&format!("  {}\n", one_line(pool)));
    }
    for count in status["counts"].as_array().into_iter().flatten() {
        let c = &count["counts"];
        out.push_str(&format!(
            "  {}/{}: {} starting, {} warm, {} claimed, {} draining, {} dead\n",
            count["region"].as_str().unwrap_or("?"),
            count["tier"].as_str().unwrap_or("?"),
            c["starting"],
            c["warm"],
            c["claimed"],
            c["draining"],
            c["dead"]
        ));
    }
    out.push_str("\ntasks\n");
    for task in status["tasks"].as_array().into_iter().flatten() {
        let state = &task["state"];
        let detail = match state["state"].as_str() {
            Some("claimed") => format!(
                "claimed by {} (epoch {})",
                state["document"].as_str().unwrap_or("?"),
                state["epoch"]
            ),
            Some("draining") | Some("dead") => format!(
                "{}: {}",
                state["state"].as_str().unwrap_or("?"),
                state["reason"].as_str().unwrap_or("")
            ),
            Some(other) => other.to_owned(),
            None => "?".to_owned(),
        };
        out.push_str(&format!(
            "  {}  {}/{}  v{}  {}\n",
            task["id"].as_str().unwrap_or("?"),
            task["region"].as_str().unwrap_or("?"),
            task["tier"].as_str().unwrap_or("?"),
            task["version"].as_str().unwrap_or("?"),
            detail
        ));
    }
    out.push_str("\ndocuments\n");
    let documents = status["documents"].as_array().cloned().unwrap_or_default();
    if documents.is_empty() {
        out.push_str("  none open\n");
    }
    for doc in documents {
        out.push_str(&format!(
            "  {}  task {}  epoch {}  tenant {}\n",
            doc["document"].as_str().unwrap_or("?"),
            doc["task"].as_str().unwrap_or("?"),
            doc["epoch"],
            doc["tenant"].as_str().unwrap_or("default")
        ));
    }
    out.push_str("\negress IP sets (airlock coordinator egress-ips)\n");
    let tenants = status["egress_ips"]["tenants"]
        .as_object()
        .cloned()
        .unwrap_or_default();
    if tenants.is_empty() {
        out.push_str("  none published\n");
    }
    for (tenant, addresses) in tenants {
        let addresses: Vec<&str> = addresses
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(Value::as_str)
            .collect();
        out.push_str(&format!("  {tenant}: {}\n", addresses.join(" ")));
    }
    out
}

/// A pool controller status entry on one line, whatever its fields.
fn one_line(value: &Value) -> String {
    match value.as_object() {
        Some(map) => map
            .iter()
            .map(|(k, v)| {
                format!(
                    "{k}={}",
                    v.as_str().map_or_else(|| v.to_string(), str::to_owned)
                )
            })
            .collect::<Vec<_>>()
            .join(" "),
        None => value.to_string(),
    }
}
