//! `vpc-cni`: the CNI plugin executable. The runtime passes CNI_* variables and the
//! network configuration on stdin; the result or error object goes to stdout, and
//! anything for a human to stderr. Exit status 1 whenever an error object is printed.

use std::io::Read;
use std::process::ExitCode;

use cni_plugin::cni::{CURRENT_VERSION, CniError, ErrorCode};
use cni_plugin::plugin::{self, Failure};

fn main() -> ExitCode {
    let mut stdin = Vec::new();
    if let Err(e) = std::io::stdin().read_to_end(&mut stdin) {
        return fail(Failure {
            cni_version: CURRENT_VERSION.to_string(),
            error: CniError::new(ErrorCode::Io, "cannot read stdin", e.to_string()),
        });
    }
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            return fail(Failure {
                cni_version: CURRENT_VERSION.to_string(),
                error: CniError::new(
                    ErrorCode::Io,
                    "cannot start the async runtime",
                    e.to_string(),
                ),
            });
        }
    };
    let env = |k: &str| std::env::var(k).ok();
    match runtime.block_on(plugin::run(&env, &stdin)) {
        Ok(Some(out)) => {
            println!("{out}");
            ExitCode::SUCCESS
        }
        Ok(None) => ExitCode::SUCCESS,
        Err(f) => fail(f),
    }
}

fn fail(f: Failure) -> ExitCode {
    eprintln!("vpc-cni: {}", f.error);
    println!("{}", f.error.to_json(&f.cni_version));
    ExitCode::FAILURE
}
