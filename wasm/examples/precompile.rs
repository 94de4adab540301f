//! Precompiles a WebAssembly module (binary or WAT) for the Wasm guest:
//! `cargo run -p vmfork-wasm --example precompile -- IN.wat OUT.cwasm`

use std::process::ExitCode;

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let [input, output] = args.as_slice() else {
        eprintln!("usage: precompile IN.wasm|IN.wat OUT.cwasm");
        return ExitCode::from(2);
    };
    let result = std::fs::read(input)
        .map_err(|e| format!("reading {input}: {e}"))
        .and_then(|wasm| vmfork_wasm::precompile(&wasm).map_err(|e| format!("{input}: {e}")))
        .and_then(|cwasm| {
            std::fs::write(output, cwasm).map_err(|e| format!("writing {output}: {e}"))
        });
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("precompile: {e}");
            ExitCode::FAILURE
        }
    }
}
