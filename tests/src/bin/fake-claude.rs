//! `fake-claude`: a stand-in for the Claude Code CLI (`claude`) for tests and benchmarks.
//!
//! It takes the real CLI's flags, prints the real output formats and exits with the real exit
//! codes (see `shared/claude-cli.md`), so the executor cannot tell it from the real thing — but it
//! never touches the network: what it "answers" is scripted through environment variables.
//!
//! # Command line (as the real CLI, 2.1.330)
//!
//! - `-p/--print` (fake-claude always behaves as in print mode), `--output-format
//!   text|json|stream-json` (default `text`), `--verbose`, `--model`, `--fallback-model`,
//!   `--max-turns`, `--max-budget-usd`, `--append-system-prompt`, `--system-prompt`,
//!   `--permission-mode`, `--session-id <uuid>`, `-r/--resume [id]`, `-c/--continue`,
//!   `--fork-session`, `--settings`, `--input-format`, `--dangerously-skip-permissions`,
//!   `--strict-mcp-config`, `--bare`, `--no-session-persistence`, `-d/--debug [filter]`, …
//! - Variadic options consume every following argument that does not start with `-` (as the
//!   real one does, so put them after the prompt): `--allowedTools`/`--allowed-tools`,
//!   `--disallowedTools`/`--disallowed-tools`, `--add-dir`, `--mcp-config`, `--tools`, `--betas`.
//! - `--opt=value` works; `--` ends the options.
//! - `-v/--version` prints `2.1.330 (Claude Code)`; `-h/--help` prints a short usage.
//! - The prompt is the first positional argument; without one, stdin is read (unless it is a
//!   terminal).
//! - Argument errors, like the real one (stderr, exit 1): `error: unknown option '--foo'`;
//!   `error: option '--model <model>' argument missing`; `error: option '--output-format
//!   <format>' argument 'xml' is invalid. Allowed choices are text, json, stream-json.`;
//!   `Error: When using --print, --output-format=stream-json requires --verbose`;
//!   `Error: Invalid session ID. Must be a valid UUID.`;
//!   `Error: Input must be provided either through stdin or as a prompt argument when using
//!   --print`.
//!
//! # Output
//!
//! - `stream-json` (needs `--verbose`): one JSON object per line, flushed as it goes: the
//!   `system`/`init` event, then what the scenario produces (`assistant`, `user`,
//!   `rate_limit_event`, `system`/`api_retry`, …), then the `result` event — shaped like
//!   `shared/claude-cli-samples/ok.stream-json`.
//! - `json`: the result object alone; with `--verbose` a JSON array of all messages (one line).
//! - `text`: the result text (or the `errors`, joined), one line.
//!
//! Exit codes: 0 on success; 1 for every API error (`is_error: true`) and for argument errors;
//! 143 on SIGTERM (no result line); 0 on SIGINT after printing an `error_during_execution`
//! result.
//!
//! # Environment
//!
//! - `FAKE_CLAUDE_SCENARIO`: what happens (default `ok`):
//!   - `ok` — an assistant message and a successful result (exit 0);
//!   - `error` — API 500 after two `api_retry` events: `is_error` result, exit 1;
//!   - `usage-limit` — the 2.1.330 subscription limit: `rate_limit_event` rejected with
//!     `resetsAt`, a synthetic assistant error with `api_error: usage_limit_reached` and
//!     `api_error_params.rate_limit_info.resetsAt`, a result with `api_error:
//!     usage_limit_reached`; text `You've hit your 5-hour limit · resets 7am (UTC)` (the reset
//!     written like the real CLI: in `TZ`, seconds cut, a date when more than a day away, a year
//!     when different); exit 1. The reset instant is `FAKE_CLAUDE_RESET_EPOCH` (unix seconds), or
//!     now + 1 h rounded to the nearest hour;
//!   - `usage-limit-text` — only the text form (no event, no `api_error`): the result text is
//!     `FAKE_CLAUDE_LIMIT_TEXT`, default `You've hit your session limit · resets 7am (UTC)`;
//!     exit 1;
//!   - `rate-limit-429` — the API-key 429 (`API Error: Request rejected (429) · This request would
//!     exceed your account's rate limit. …`), not a usage limit; exit 1;
//!   - `overloaded-529` — `API Error: Repeated 529 Overloaded errors. …`; exit 1;
//!   - `not-logged-in` — `Not logged in · Please run /login`; exit 1;
//!   - `invalid-key` — 401 `Invalid API key · Fix external API key`; exit 1;
//!   - `max-turns` — tool-use turns, then an `error_max_turns` result with `errors` (N =
//!     `--max-turns`, default 1); exit 1;
//!   - `crash` — init and a partial assistant message, a stack trace on stderr, exit 1 without a
//!     result;
//!   - `no-conversation` — `No conversation found with session ID: <id>` on stderr, exit 1;
//!   - `sample:<file>` — replays a captured file verbatim (a name in `FAKE_CLAUDE_SAMPLES_DIR`,
//!     default `shared/claude-cli-samples` beside the repository, or an absolute path); exit code
//!     from `FAKE_CLAUDE_EXIT`, else the file's `exit=` in the folder's `INDEX`, else 0. With
//!     `FAKE_CLAUDE_SLEEP_MS` the first line is written before the sleep.
//! - `FAKE_CLAUDE_SCENARIOS`: a comma list, one entry per invocation (`error,error,ok`); the last
//!   entry repeats. The position is a counter file in `FAKE_CLAUDE_STATE_DIR` (required; created
//!   if missing), updated under an exclusive file lock, so concurrent invocations each get their
//!   own entry. Invocations that stop at argument errors or `--version`/`--help` do not take an
//!   entry. Takes precedence over `FAKE_CLAUDE_SCENARIO`.
//! - `FAKE_CLAUDE_SESSIONS_DIR=<dir>`: keep sessions like the real CLI, per working directory
//!   (the real one keeps `~/.claude/projects/<cwd, every non-alphanumeric character a '-'>/<id>.jsonl`
//!   and finds a session only from the directory it was made in): a successful (`ok`) run's
//!   session id becomes a file in `<dir>/<cwd munged>/`; `--resume <id>` of an id with no file
//!   there plays `no-conversation` (whatever the scenario). Without it, any id is resumed.
//! - `FAKE_CLAUDE_SLEEP_MS`: sleep this long after the init event, before the rest (so streaming
//!   is observable and timeouts can be tested).
//! - `FAKE_CLAUDE_SLEEP_UNLESS=<path>`: no sleep when this path exists (checked when the sleep would begin):
//!   runs started before a test creates it are slow, later ones quick.
//! - `FAKE_CLAUDE_OUTPUT_BYTES`: this many bytes of extra assistant text after the init event
//!   (stream-json: `assistant` events of at most 8 KiB of text each; text/json: plain lines of
//!   8 KiB). Streamed, never held in memory: 100 MB is fine.
//! - `FAKE_CLAUDE_STDERR`: written to stderr (after the init event).
//! - `FAKE_CLAUDE_RESULT_ENV=<NAME>`: the `ok` result text is the value of the environment
//!   variable `NAME` (a CLI that prints a secret it was given; wins over `FAKE_CLAUDE_RESULT`).
//! - `FAKE_CLAUDE_RESULT`: the `ok` result text (default `Hello from fake claude: <the first 50
//!   characters of the prompt>`).
//! - `FAKE_CLAUDE_COST_USD`: the `ok` result's `total_cost_usd` (and the model's `costUSD`),
//!   default 0.00014; `none` leaves both out (as a CLI that reports no cost).
//! - `FAKE_CLAUDE_EXIT`: overrides the exit code (any scenario).
//! - `FAKE_CLAUDE_IGNORE_SIGTERM=1`: ignore SIGTERM (to test TERM→KILL escalation). The
//!   disposition is inherited by the grandchild of `FAKE_CLAUDE_SPAWN_CHILD`.
//! - `FAKE_CLAUDE_SPAWN_CHILD=1`: start a grandchild `sleep 600` in the same process group and
//!   print `grandchild pid N` on stderr. Its stdio is /dev/null (so it does not hold the pipes
//!   open after a normal exit); `FAKE_CLAUDE_SPAWN_CHILD=inherit` lets it inherit them.
//! - `FAKE_CLAUDE_ALLOC_MB`: allocate and touch this much memory (1 MiB at a time) after the
//!   init event, and hold it until exit.
//! - `FAKE_CLAUDE_RECORD=<path>`: append one JSON line per invocation, in a single `O_APPEND`
//!   write: `{"pid":..,"argv":[argv0,..],"cwd":"..","stdin":".."|null,"env":{TZ, HOME, CNP_*,
//!   JOB_*},"started_unix_ns":..,"scenario":".."|null}`. `started_unix_ns` is CLOCK_REALTIME
//!   taken first thing in `main`; `stdin` is null when stdin was not read (prompt given as an
//!   argument); `scenario` is null for invocations that stopped at argument checks.
//! - `FAKE_CLAUDE_ROOT_CHECK=1`: refuse `--dangerously-skip-permissions` and `--permission-mode
//!   bypassPermissions` when running as root without `IS_SANDBOX=1`, as the real CLI does (off by
//!   default so tests can run as root).
//!
//! Signals: SIGTERM exits 143 without a result line, like the real CLI (a handler calls
//! `_exit(143)`). SIGINT prints an `error_during_execution` result (in the selected format) and
//! exits 0. Both handlers are installed through libc's `signal(2)`, declared here directly (std
//! links libc anyway), so the crate needs no `libc` dependency.

use std::fs::OpenOptions;
use std::io::{self, IsTerminal, Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::OnceLock;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use chrono::{DateTime, Datelike, Local, TimeZone, Timelike, Utc};
use serde_json::{json, Map, Value};

const VERSION: &str = "2.1.330";
const DEFAULT_MODEL: &str = "claude-opus-5-5";
const CHUNK: usize = 8 * 1024;

fn main() {
    // First, before anything else: the benchmark measures due → spawned with this.
    let started_unix_ns = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_nanos() as u64)
        .unwrap_or(0);
    sys::install_sigterm(env_flag("FAKE_CLAUDE_IGNORE_SIGTERM"));
    let code = run(started_unix_ns);
    let _ = io::stdout().flush();
    std::process::exit(code);
}

// ---------------------------------------------------------------------------------------------
// Signals (std-only: libc's functions declared by hand)

#[allow(unsafe_code)]
mod sys {
    use std::ffi::{c_int, c_void};
    use std::sync::atomic::Ordering;

    extern "C" {
        fn signal(signum: c_int, handler: usize) -> usize;
        fn write(fd: c_int, buf: *const c_void, count: usize) -> isize;
        fn _exit(status: c_int) -> !;
        fn getuid() -> u32;
    }

    const SIGINT: c_int = 2;
    const SIGTERM: c_int = 15;
    const SIG_IGN: usize = 1;

    extern "C" fn on_term(_: c_int) {
        // SAFETY: _exit is async-signal-safe.
        unsafe { _exit(143) }
    }

    extern "C" fn on_int(_: c_int) {
        if let Some(buf) = super::INTERRUPT_OUTPUT.get() {
            // SAFETY: write(2) and _exit(2) are async-signal-safe; the buffer is immutable.
            unsafe {
                if super::MID_LINE.load(Ordering::SeqCst) {
                    write(1, b"\n".as_ptr().cast(), 1);
                }
                write(1, buf.as_ptr().cast(), buf.len());
            }
        }
        // SAFETY: as above.
        unsafe { _exit(0) }
    }

    /// SIGTERM: exit 143 at once (as the real CLI does), or ignore it.
    pub fn install_sigterm(ignore: bool) {
        let handler = if ignore {
            SIG_IGN
        } else {
            on_term as extern "C" fn(c_int) as usize
        };
        // SAFETY: installs a handler that only calls async-signal-safe functions.
        unsafe {
            signal(SIGTERM, handler);
        }
    }

    /// SIGINT: print [`super::INTERRUPT_OUTPUT`] and exit 0.
    pub fn install_sigint() {
        // SAFETY: as above.
        unsafe {
            signal(SIGINT, on_int as extern "C" fn(c_int) as usize);
        }
    }

    pub fn is_root() -> bool {
        // SAFETY: getuid cannot fail.
        unsafe { getuid() == 0 }
    }
}

/// What SIGINT prints (the `error_during_execution` result), prepared before the slow part.
static INTERRUPT_OUTPUT: OnceLock<Vec<u8>> = OnceLock::new();
/// Set while a line is being written, so SIGINT starts its result on a fresh line.
static MID_LINE: AtomicBool = AtomicBool::new(false);

// ---------------------------------------------------------------------------------------------
// Arguments

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Format {
    Text,
    Json,
    StreamJson,
}

#[derive(Debug, Default)]
struct Args {
    output_format: Option<String>,
    verbose: bool,
    model: Option<String>,
    max_turns: Option<String>,
    session_id: Option<String>,
    resume: Option<String>,
    permission_mode: Option<String>,
    input_format: Option<String>,
    skip_permissions: bool,
    prompt: Option<String>,
    version: bool,
    help: bool,
}

/// Options that take exactly one value, with the placeholder commander prints in errors.
const VALUE_OPTS: &[(&str, &str)] = &[
    ("--output-format", "<format>"),
    ("--input-format", "<format>"),
    ("--model", "<model>"),
    ("--fallback-model", "<model>"),
    ("--max-turns", "<turns>"),
    ("--max-budget-usd", "<amount>"),
    ("--append-system-prompt", "<prompt>"),
    ("--append-system-prompt-file", "<file>"),
    ("--system-prompt", "<prompt>"),
    ("--system-prompt-file", "<file>"),
    ("--permission-mode", "<mode>"),
    ("--permission-prompt-tool", "<tool>"),
    ("--session-id", "<uuid>"),
    ("--settings", "<file-or-json>"),
    ("--setting-sources", "<sources>"),
    ("--agents", "<json>"),
    ("--agent", "<agent>"),
    ("--json-schema", "<schema>"),
    ("--effort", "<level>"),
];
/// Options that take every following argument not starting with `-`.
const VARIADIC_OPTS: &[&str] = &[
    "--allowedTools",
    "--allowed-tools",
    "--disallowedTools",
    "--disallowed-tools",
    "--add-dir",
    "--mcp-config",
    "--tools",
    "--betas",
    "--plugin-dir",
];
/// Options with an optional value (taken if the next argument does not start with `-`).
const OPTIONAL_VALUE_OPTS: &[&str] = &["-r", "--resume", "-d", "--debug"];
const FLAGS: &[&str] = &[
    "-p",
    "--print",
    "--verbose",
    "-c",
    "--continue",
    "--dangerously-skip-permissions",
    "--allow-dangerously-skip-permissions",
    "--strict-mcp-config",
    "--bare",
    "--no-session-persistence",
    "--fork-session",
    "--include-partial-messages",
    "--replay-user-messages",
    "--ide",
    "--mcp-debug",
];

fn parse_args(argv: &[String]) -> Result<Args, String> {
    let mut a = Args::default();
    let mut i = 0;
    let mut positional_only = false;
    while i < argv.len() {
        let arg = &argv[i];
        i += 1;
        if positional_only || !arg.starts_with('-') || arg == "-" {
            if a.prompt.is_none() {
                a.prompt = Some(arg.clone());
            }
            continue;
        }
        if arg == "--" {
            positional_only = true;
            continue;
        }
        let (name, inline) = match arg.split_once('=') {
            Some((n, v)) if n.starts_with("--") => (n, Some(v.to_owned())),
            _ => (arg.as_str(), None),
        };
        match name {
            "-v" | "--version" => a.version = true,
            "-h" | "--help" => a.help = true,
            _ if FLAGS.contains(&name) => match name {
                "--verbose" => a.verbose = true,
                "--dangerously-skip-permissions" => a.skip_permissions = true,
                _ => {}
            },
            _ if OPTIONAL_VALUE_OPTS.contains(&name) => {
                let value = inline.or_else(|| match argv.get(i) {
                    Some(v) if !v.starts_with('-') => {
                        i += 1;
                        Some(v.clone())
                    }
                    _ => None,
                });
                if matches!(name, "-r" | "--resume") {
                    a.resume = Some(value.unwrap_or_default());
                }
            }
            _ if VARIADIC_OPTS.contains(&name) => {
                let mut n = usize::from(inline.is_some());
                while argv.get(i).is_some_and(|v| !v.starts_with('-')) {
                    i += 1;
                    n += 1;
                }
                if n == 0 {
                    return Err(format!(
                        "error: option '{name} <values...>' argument missing"
                    ));
                }
            }
            _ => {
                let Some((_, placeholder)) = VALUE_OPTS.iter().find(|(n, _)| *n == name) else {
                    return Err(format!("error: unknown option '{arg}'"));
                };
                let value = match inline {
                    Some(v) => v,
                    None => match argv.get(i) {
                        Some(v) => {
                            i += 1;
                            v.clone()
                        }
                        None => {
                            return Err(format!(
                                "error: option '{name} {placeholder}' argument missing"
                            ))
                        }
                    },
                };
                match name {
                    "--output-format" => a.output_format = Some(value),
                    "--input-format" => a.input_format = Some(value),
                    "--model" => a.model = Some(value),
                    "--max-turns" => a.max_turns = Some(value),
                    "--session-id" => a.session_id = Some(value),
                    "--permission-mode" => a.permission_mode = Some(value),
                    _ => {}
                }
            }
        }
    }
    check_choice(
        "--output-format <format>",
        &a.output_format,
        &["text", "json", "stream-json"],
    )?;
    check_choice(
        "--input-format <format>",
        &a.input_format,
        &["text", "stream-json"],
    )?;
    check_choice(
        "--permission-mode <mode>",
        &a.permission_mode,
        &[
            "acceptEdits",
            "auto",
            "bypassPermissions",
            "default",
            "dontAsk",
            "manual",
            "plan",
        ],
    )?;
    Ok(a)
}

fn check_choice(option: &str, value: &Option<String>, allowed: &[&str]) -> Result<(), String> {
    match value {
        Some(v) if !allowed.contains(&v.as_str()) => Err(format!(
            "error: option '{option}' argument '{v}' is invalid. Allowed choices are {}.",
            allowed.join(", ")
        )),
        _ => Ok(()),
    }
}

const HELP: &str = "Usage: claude [options] [command] [prompt]

Claude Code - starts an interactive session by default, use -p/--print for non-interactive output

Arguments:
  prompt                                            Your prompt

Options:
  -d, --debug [filter]                              Enable debug mode
  --verbose                                         Override verbose mode setting from config
  -p, --print                                       Print response and exit (useful for pipes)
  --output-format <format>                          Output format (only works with --print): \"text\" (default), \"json\", or \"stream-json\"
  --allowedTools, --allowed-tools <tools...>        Tool names to allow
  --disallowedTools, --disallowed-tools <tools...>  Tool names to deny
  --mcp-config <configs...>                         Load MCP servers from JSON files or strings
  --append-system-prompt <prompt>                   Append a system prompt to the default system prompt
  --permission-mode <mode>                          Permission mode to use for the session
  -c, --continue                                    Continue the most recent conversation
  -r, --resume [sessionId]                          Resume a conversation
  --model <model>                                   Model for the current session
  --fallback-model <model>                          Fallback model when the default one is overloaded
  --add-dir <directories...>                        Additional directories to allow tool access to
  --session-id <uuid>                               Use a specific session ID for the conversation
  --dangerously-skip-permissions                    Bypass all permission checks
  -v, --version                                     Output the version number
  -h, --help                                        Display help for command
";

// ---------------------------------------------------------------------------------------------
// Invocation

struct Invocation {
    started_unix_ns: u64,
    argv: Vec<String>,
    stdin: Option<String>,
    scenario: Option<String>,
}

fn run(started_unix_ns: u64) -> i32 {
    let argv: Vec<String> = std::env::args_os()
        .map(|a| a.to_string_lossy().into_owned())
        .collect();
    let mut inv = Invocation {
        started_unix_ns,
        argv,
        stdin: None,
        scenario: None,
    };
    let args = match parse_args(&inv.argv[1.min(inv.argv.len())..]) {
        Ok(a) => a,
        Err(e) => return fail_args(&inv, &e),
    };
    if args.version {
        record(&inv);
        println!("{VERSION} (Claude Code)");
        return 0;
    }
    if args.help {
        record(&inv);
        print!("{HELP}");
        return 0;
    }
    let format = match args.output_format.as_deref() {
        Some("json") => Format::Json,
        Some("stream-json") => Format::StreamJson,
        _ => Format::Text,
    };
    if format == Format::StreamJson && !args.verbose {
        return fail_args(
            &inv,
            "Error: When using --print, --output-format=stream-json requires --verbose",
        );
    }
    if let Some(id) = &args.session_id {
        if uuid::Uuid::parse_str(id).is_err() {
            return fail_args(&inv, "Error: Invalid session ID. Must be a valid UUID.");
        }
    }
    let bypass =
        args.skip_permissions || args.permission_mode.as_deref() == Some("bypassPermissions");
    if bypass
        && env_flag("FAKE_CLAUDE_ROOT_CHECK")
        && sys::is_root()
        && std::env::var("IS_SANDBOX").as_deref() != Ok("1")
    {
        return fail_args(
            &inv,
            "--dangerously-skip-permissions cannot be used with root/sudo privileges for security reasons",
        );
    }
    let prompt = match &args.prompt {
        Some(p) => p.clone(),
        None => {
            let stdin = io::stdin();
            let mut buf = Vec::new();
            if !stdin.is_terminal() {
                let _ = stdin.lock().read_to_end(&mut buf);
            }
            let text = String::from_utf8_lossy(&buf).into_owned();
            inv.stdin = Some(text.clone());
            text
        }
    };
    if prompt.trim().is_empty() {
        return fail_args(
            &inv,
            "Error: Input must be provided either through stdin or as a prompt argument when using --print",
        );
    }

    let mut scenario = pick_scenario();
    let session_id = args
        .session_id
        .clone()
        .or_else(|| args.resume.clone().filter(|r| !r.is_empty()))
        .unwrap_or_else(|| uuid::Uuid::new_v4().to_string());
    // Sessions, like the real CLI's: a conversation that ended well can be resumed; resuming
    // one that does not exist fails.
    if let Some(dir) = std::env::var_os("FAKE_CLAUDE_SESSIONS_DIR").map(PathBuf::from) {
        let cwd = std::env::current_dir().unwrap_or_default();
        let munged: String = cwd
            .to_string_lossy()
            .chars()
            .map(|c| if c.is_ascii_alphanumeric() { c } else { '-' })
            .collect();
        let dir = dir.join(munged);
        let resumed = args.resume.as_deref().filter(|r| !r.is_empty());
        if resumed.is_some_and(|id| !dir.join(id).exists()) {
            scenario = "no-conversation".into();
        } else if scenario == "ok" {
            let _ = std::fs::create_dir_all(&dir);
            let _ = std::fs::write(dir.join(&session_id), b"");
        }
    }
    inv.scenario = Some(scenario.clone());
    record(&inv);
    let mut fake = Fake {
        format,
        verbose: args.verbose,
        model: args
            .model
            .clone()
            .unwrap_or_else(|| DEFAULT_MODEL.to_owned()),
        session_id,
        permission_mode: args
            .permission_mode
            .clone()
            .unwrap_or_else(|| "default".to_owned()),
        prompt,
        max_turns: args
            .max_turns
            .as_deref()
            .and_then(|s| s.parse().ok())
            .unwrap_or(1),
        start: Instant::now(),
        collected: Vec::new(),
        out: io::stdout(),
    };
    let code = match fake.play(&scenario) {
        Ok(code) => code,
        Err(e) if e.kind() == io::ErrorKind::BrokenPipe => 1,
        Err(e) => {
            eprintln!("fake-claude: {e}");
            1
        }
    };
    match std::env::var("FAKE_CLAUDE_EXIT")
        .ok()
        .and_then(|v| v.trim().parse().ok())
    {
        Some(c) => c,
        None => code,
    }
}

fn fail_args(inv: &Invocation, message: &str) -> i32 {
    record(inv);
    eprintln!("{message}");
    1
}

fn env_flag(name: &str) -> bool {
    matches!(std::env::var(name).as_deref(), Ok(v) if !v.is_empty() && v != "0" && v != "false")
}

fn env_u64(name: &str) -> Option<u64> {
    std::env::var(name).ok().and_then(|v| v.trim().parse().ok())
}

/// `FAKE_CLAUDE_SLEEP_MS`, unless the `FAKE_CLAUDE_SLEEP_UNLESS` path exists.
fn sleep_ms() -> Option<u64> {
    let skip = std::env::var_os("FAKE_CLAUDE_SLEEP_UNLESS").is_some_and(|p| Path::new(&p).exists());
    env_u64("FAKE_CLAUDE_SLEEP_MS").filter(|_| !skip)
}

/// The scenario for this invocation: the next entry of `FAKE_CLAUDE_SCENARIOS`, or
/// `FAKE_CLAUDE_SCENARIO`, or `ok`.
fn pick_scenario() -> String {
    if let Ok(list) = std::env::var("FAKE_CLAUDE_SCENARIOS") {
        let entries: Vec<&str> = list
            .split(',')
            .map(str::trim)
            .filter(|s| !s.is_empty())
            .collect();
        if !entries.is_empty() {
            let index = match std::env::var_os("FAKE_CLAUDE_STATE_DIR") {
                Some(dir) => next_index(Path::new(&dir)).unwrap_or_else(|e| {
                    eprintln!("fake-claude: FAKE_CLAUDE_STATE_DIR counter: {e}; using entry 0");
                    0
                }),
                None => {
                    eprintln!("fake-claude: FAKE_CLAUDE_SCENARIOS needs FAKE_CLAUDE_STATE_DIR; using entry 0");
                    0
                }
            };
            return entries[index.min(entries.len() - 1)].to_owned();
        }
    }
    std::env::var("FAKE_CLAUDE_SCENARIO")
        .ok()
        .filter(|s| !s.trim().is_empty())
        .unwrap_or_else(|| "ok".to_owned())
}

/// Takes the next invocation index from `<dir>/counter`, under an exclusive lock.
fn next_index(dir: &Path) -> io::Result<usize> {
    std::fs::create_dir_all(dir)?;
    let mut f = OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .open(dir.join("counter"))?;
    f.lock()?;
    let mut s = String::new();
    f.read_to_string(&mut s)?;
    let n: usize = s.trim().parse().unwrap_or(0);
    f.set_len(0)?;
    f.seek(SeekFrom::Start(0))?;
    f.write_all(format!("{}\n", n + 1).as_bytes())?;
    f.sync_data().ok();
    f.unlock()?;
    Ok(n)
}

/// Appends this invocation to `FAKE_CLAUDE_RECORD` in one `O_APPEND` write.
fn record(inv: &Invocation) {
    let Some(path) = std::env::var_os("FAKE_CLAUDE_RECORD") else {
        return;
    };
    let mut env = Map::new();
    for (k, v) in std::env::vars_os() {
        let (Some(k), Some(v)) = (k.to_str(), v.to_str()) else {
            continue;
        };
        if k == "TZ" || k == "HOME" || k.starts_with("CNP_") || k.starts_with("JOB_") {
            env.insert(k.to_owned(), Value::String(v.to_owned()));
        }
    }
    let cwd = std::env::current_dir()
        .map(|p| p.to_string_lossy().into_owned())
        .unwrap_or_default();
    let line = json!({
        "pid": std::process::id(),
        "argv": inv.argv,
        "cwd": cwd,
        "stdin": inv.stdin,
        "env": env,
        "started_unix_ns": inv.started_unix_ns,
        "scenario": inv.scenario,
    });
    let mut bytes = serde_json::to_vec(&line).unwrap_or_default();
    bytes.push(b'\n');
    let written = OpenOptions::new()
        .append(true)
        .create(true)
        .open(&path)
        .and_then(|mut f| f.write(&bytes));
    match written {
        Ok(n) if n == bytes.len() => {}
        Ok(n) => eprintln!(
            "fake-claude: short write to FAKE_CLAUDE_RECORD ({n} of {})",
            bytes.len()
        ),
        Err(e) => eprintln!(
            "fake-claude: FAKE_CLAUDE_RECORD {}: {e}",
            PathBuf::from(path).display()
        ),
    }
}

// ---------------------------------------------------------------------------------------------
// Playing a scenario

struct Fake {
    format: Format,
    verbose: bool,
    model: String,
    session_id: String,
    permission_mode: String,
    prompt: String,
    max_turns: u32,
    start: Instant,
    /// Messages kept for `--output-format json --verbose`.
    collected: Vec<Value>,
    out: io::Stdout,
}

impl Fake {
    fn play(&mut self, scenario: &str) -> io::Result<i32> {
        if let Some(file) = scenario.strip_prefix("sample:") {
            return self.replay(file);
        }
        const KNOWN: &[&str] = &[
            "ok",
            "error",
            "usage-limit",
            "usage-limit-text",
            "rate-limit-429",
            "overloaded-529",
            "not-logged-in",
            "invalid-key",
            "max-turns",
            "crash",
            "no-conversation",
        ];
        if !KNOWN.contains(&scenario) {
            eprintln!("fake-claude: unknown scenario '{scenario}' (FAKE_CLAUDE_SCENARIO)");
            return Ok(2);
        }
        if scenario == "no-conversation" {
            eprintln!("No conversation found with session ID: {}", self.session_id);
            return Ok(1);
        }

        self.prepare_interrupt();
        self.event(self.init_event())?;
        self.side_effects()?;

        match scenario {
            "ok" => {
                let echoed = std::env::var("FAKE_CLAUDE_RESULT_ENV")
                    .ok()
                    .map(|name| std::env::var(name).unwrap_or_default());
                let text = echoed
                    .or_else(|| std::env::var("FAKE_CLAUDE_RESULT").ok())
                    .unwrap_or_else(|| {
                        let head: String = self.prompt.trim().chars().take(50).collect();
                        format!("Hello from fake claude: {head}")
                    });
                self.event(self.assistant_event(json!([{"type": "text", "text": text}])))?;
                let cost = match std::env::var("FAKE_CLAUDE_COST_USD").as_deref() {
                    Ok("none") => None,
                    Ok(v) => match v.parse::<f64>() {
                        Ok(c) => Some(c),
                        Err(_) => {
                            eprintln!("fake-claude: FAKE_CLAUDE_COST_USD={v} is not a number");
                            return Ok(2);
                        }
                    },
                    Err(_) => Some(0.00014),
                };
                let mut model_usage = json!({
                    "inputTokens": 10, "outputTokens": 5, "cacheReadInputTokens": 0,
                    "cacheCreationInputTokens": 0, "webSearchRequests": 0, "costUSD": cost,
                    "contextWindow": 1_000_000, "maxOutputTokens": 128_000,
                });
                let mut r = self.result_event(json!({
                    "subtype": "success",
                    "is_error": false,
                    "result": text,
                    "num_turns": 1,
                    "total_cost_usd": cost,
                    "stop_reason": "end_turn",
                    "terminal_reason": "completed",
                    "api_error_status": null,
                    "usage": usage(10, 5),
                }));
                if cost.is_none() {
                    r.as_object_mut().unwrap().remove("total_cost_usd");
                    model_usage.as_object_mut().unwrap().remove("costUSD");
                }
                r["modelUsage"] = json!({ self.model.clone(): model_usage });
                self.result(r)?;
                Ok(0)
            }
            "error" => {
                self.retries(500, "server_error", 2)?;
                let text = "API Error: 500 Internal server error. This is a server-side issue, usually temporary — try again in a moment.";
                self.api_error(text, json!({"error": "server_error", "api_error_status": 500, "api_error_type": "api_error"}))
            }
            "usage-limit" => {
                let reset = env_u64("FAKE_CLAUDE_RESET_EPOCH")
                    .map(|s| s as i64)
                    .unwrap_or_else(default_reset_epoch);
                let text = format!(
                    "You've hit your 5-hour limit · resets {}",
                    format_reset(reset)
                );
                let info = json!({
                    "status": "rejected",
                    "resetsAt": reset,
                    "rateLimitType": "five_hour",
                    "overageStatus": "rejected",
                    "overageDisabledReason": "org_level_disabled",
                    "isUsingOverage": false,
                });
                self.event(json!({
                    "type": "rate_limit_event",
                    "rate_limit_info": info,
                    "uuid": uuid(),
                    "session_id": self.session_id,
                }))?;
                self.api_error(
                    &text,
                    json!({
                        "error": "rate_limit",
                        "api_error_status": 429,
                        "api_error_type": "rate_limit_error",
                        "api_error": "usage_limit_reached",
                        "api_error_params": {"rate_limit_info": info},
                    }),
                )
            }
            "usage-limit-text" => {
                let text = std::env::var("FAKE_CLAUDE_LIMIT_TEXT").unwrap_or_else(|_| {
                    "You've hit your session limit · resets 7am (UTC)".to_owned()
                });
                self.api_error(
                    &text,
                    json!({"error": "rate_limit", "api_error_status": 429}),
                )
            }
            "rate-limit-429" => {
                let text = "API Error: Request rejected (429) · This request would exceed your account's rate limit. Please try again later.";
                self.api_error(text, json!({"error": "rate_limit", "api_error_status": 429, "api_error_type": "rate_limit_error"}))
            }
            "overloaded-529" => {
                self.retries(529, "overloaded", 2)?;
                let text = "API Error: Repeated 529 Overloaded errors. The API is at capacity — try again in a moment.";
                self.api_error(text, json!({"error": "server_error", "api_error_status": 529, "api_error_type": "overloaded_error"}))
            }
            "not-logged-in" => self.api_error(
                "Not logged in · Please run /login",
                json!({"error": "authentication_failed", "api_error_status": null}),
            ),
            "invalid-key" => {
                self.retries(401, "authentication_failed", 2)?;
                self.api_error(
                    "Invalid API key · Fix external API key",
                    json!({"error": "authentication_failed", "api_error_status": 401, "api_error_type": "authentication_error"}),
                )
            }
            "max-turns" => {
                let turns = self.max_turns.max(1);
                for n in 1..=turns {
                    let id = format!("toolu_fake{n}");
                    self.event(self.assistant_event(json!([{
                        "type": "tool_use", "id": id, "name": "Bash",
                        "input": {"command": "ls", "description": "List files"},
                    }])))?;
                    self.event(json!({
                        "type": "user",
                        "message": {"role": "user", "content": [{
                            "type": "tool_result", "content": "README.md", "is_error": false, "tool_use_id": id,
                        }]},
                        "parent_tool_use_id": null,
                        "session_id": self.session_id,
                        "uuid": uuid(),
                        "timestamp": timestamp(),
                        "tool_use_result": {"stdout": "README.md", "stderr": "", "interrupted": false},
                    }))?;
                }
                let r = self.result_event(json!({
                    "subtype": "error_max_turns",
                    "is_error": true,
                    "errors": [format!("Reached maximum number of turns ({turns})")],
                    "num_turns": turns + 1,
                    "total_cost_usd": 0.00036,
                    "stop_reason": "tool_use",
                    "terminal_reason": "max_turns",
                    "usage": usage(20, 14),
                }));
                self.result(r)?;
                Ok(1)
            }
            "crash" => {
                self.event(
                    self.assistant_event(json!([{"type": "text", "text": "Let me look at th"}])),
                )?;
                eprintln!("TypeError: Cannot read properties of undefined (reading 'content')");
                eprintln!("    at processTurn (file:///$bunfs/root/claude:4242:17)");
                eprintln!("    at async main (file:///$bunfs/root/claude:9001:3)");
                Ok(1)
            }
            _ => unreachable!(),
        }
    }

    /// The optional extras, in order: stderr text, grandchild, memory, runaway output, sleep.
    fn side_effects(&mut self) -> io::Result<()> {
        if let Ok(text) = std::env::var("FAKE_CLAUDE_STDERR") {
            let mut e = io::stderr().lock();
            e.write_all(text.as_bytes())?;
            if !text.ends_with('\n') {
                e.write_all(b"\n")?;
            }
            e.flush()?;
        }
        if let Ok(mode) = std::env::var("FAKE_CLAUDE_SPAWN_CHILD") {
            if !mode.is_empty() && mode != "0" {
                spawn_grandchild(mode == "inherit")?;
            }
        }
        if let Some(mb) = env_u64("FAKE_CLAUDE_ALLOC_MB") {
            let mut chunks: Vec<Vec<u8>> = Vec::with_capacity(mb as usize);
            for _ in 0..mb {
                let mut chunk = vec![0u8; 1 << 20];
                for i in (0..chunk.len()).step_by(4096) {
                    chunk[i] = 1;
                }
                chunks.push(std::hint::black_box(chunk));
            }
            // Held until exit.
            std::mem::forget(chunks);
        }
        if let Some(n) = env_u64("FAKE_CLAUDE_OUTPUT_BYTES") {
            self.runaway_output(n)?;
        }
        if let Some(ms) = sleep_ms() {
            std::thread::sleep(Duration::from_millis(ms));
        }
        Ok(())
    }

    fn runaway_output(&mut self, total: u64) -> io::Result<()> {
        const FILLER: &[u8] = b"All work and no play makes Jack a dull boy. ";
        let filler_of = |n: usize| -> Vec<u8> { FILLER.iter().copied().cycle().take(n).collect() };
        let full = filler_of(CHUNK);
        let mut left = total;
        let mut out = self.out.lock();
        if self.format == Format::StreamJson {
            // One event template, split around the text.
            let marker = "\u{1}FILL\u{1}";
            let template = serde_json::to_string(
                &self.assistant_event(json!([{"type": "text", "text": marker}])),
            )
            .unwrap_or_default();
            let escaped_marker = serde_json::to_string(marker).unwrap_or_default();
            let escaped_marker = &escaped_marker[1..escaped_marker.len() - 1];
            let (head, tail) = template
                .split_once(escaped_marker)
                .unwrap_or((&template, ""));
            while left > 0 {
                let n = left.min(CHUNK as u64) as usize;
                MID_LINE.store(true, Ordering::SeqCst);
                out.write_all(head.as_bytes())?;
                out.write_all(&full[..n])?;
                out.write_all(tail.as_bytes())?;
                out.write_all(b"\n")?;
                MID_LINE.store(false, Ordering::SeqCst);
                left -= n as u64;
            }
        } else {
            // Plain lines of up to 8 KiB including the newline: exactly `total` bytes.
            while left > 0 {
                let n = left.min(CHUNK as u64) as usize;
                MID_LINE.store(true, Ordering::SeqCst);
                out.write_all(&full[..n - 1])?;
                out.write_all(b"\n")?;
                MID_LINE.store(false, Ordering::SeqCst);
                left -= n as u64;
            }
        }
        out.flush()
    }

    /// `count` `system`/`api_retry` events.
    fn retries(&mut self, status: u16, error: &str, count: u32) -> io::Result<()> {
        for attempt in 1..=count {
            self.event(json!({
                "type": "system",
                "subtype": "api_retry",
                "attempt": attempt,
                "max_retries": 10,
                "retry_delay_ms": 500 * attempt,
                "error_status": status,
                "error": error,
                "session_id": self.session_id,
                "uuid": uuid(),
            }))?;
        }
        Ok(())
    }

    /// A synthetic assistant error message and the matching `is_error` result; exit 1.
    fn api_error(&mut self, text: &str, fields: Value) -> io::Result<i32> {
        let mut msg = self.assistant_event(json!([{"type": "text", "text": text}]));
        msg["message"]["model"] = json!("<synthetic>");
        msg["message"]["stop_reason"] = json!("stop_sequence");
        msg["message"]["stop_sequence"] = json!("");
        msg["message"]["usage"] = usage(0, 0);
        msg["is_api_error_message"] = json!(true);
        msg["request_id"] = json!("req_fake0001");
        let mut result = json!({
            "subtype": "success",
            "is_error": true,
            "result": text,
            "num_turns": 1,
            "total_cost_usd": 0,
            "stop_reason": "stop_sequence",
            "terminal_reason": "api_error",
            "usage": usage(0, 0),
        });
        if let Value::Object(f) = fields {
            for (k, v) in f {
                if k != "error" && k != "api_error_params" {
                    result[&k] = v.clone();
                }
                msg[&k] = v;
            }
        }
        self.event(msg)?;
        let r = self.result_event(result);
        self.result(r)?;
        Ok(1)
    }

    fn replay(&mut self, file: &str) -> io::Result<i32> {
        let path = if Path::new(file).is_absolute() {
            PathBuf::from(file)
        } else {
            samples_dir().join(file)
        };
        let data = match std::fs::read(&path) {
            Ok(d) => d,
            Err(e) => {
                eprintln!("fake-claude: cannot read sample {}: {e}", path.display());
                return Ok(2);
            }
        };
        let code = index_exit_code(&path).unwrap_or(0);
        let mut out = self.out.lock();
        match (sleep_ms(), data.iter().position(|&b| b == b'\n')) {
            (Some(ms), Some(nl)) => {
                out.write_all(&data[..=nl])?;
                out.flush()?;
                std::thread::sleep(Duration::from_millis(ms));
                out.write_all(&data[nl + 1..])?;
            }
            (Some(ms), None) => {
                std::thread::sleep(Duration::from_millis(ms));
                out.write_all(&data)?;
            }
            (None, _) => out.write_all(&data)?,
        }
        out.flush()?;
        Ok(code)
    }

    // --- events ------------------------------------------------------------------------------

    fn init_event(&self) -> Value {
        let cwd = std::env::current_dir()
            .map(|p| p.to_string_lossy().into_owned())
            .unwrap_or_default();
        let key_source = if std::env::var_os("ANTHROPIC_API_KEY").is_some() {
            "ANTHROPIC_API_KEY"
        } else {
            "none"
        };
        json!({
            "type": "system",
            "subtype": "init",
            "cwd": cwd,
            "session_id": self.session_id,
            "tools": ["Task", "Bash", "Edit", "NotebookEdit", "Read", "Skill", "TaskStop",
                      "ToolSearch", "WebFetch", "WebSearch", "Write"],
            "mcp_servers": [],
            "model": self.model,
            "permissionMode": self.permission_mode,
            "slash_commands": ["compact", "context", "init", "review", "usage"],
            "apiKeySource": key_source,
            "claude_code_version": VERSION,
            "output_style": "default",
            "agents": ["claude", "Explore", "general-purpose", "Plan"],
            "skills": [],
            "plugins": [],
            "analytics_disabled": false,
            "product_feedback_disabled": false,
            "uuid": uuid(),
            "memory_paths": {},
            "original_cwd": cwd,
            "additional_directories": [],
            "fast_mode_state": "off",
        })
    }

    fn assistant_event(&self, content: Value) -> Value {
        json!({
            "type": "assistant",
            "message": {
                "id": format!("msg_fake{}", &uuid()[..8]),
                "type": "message",
                "role": "assistant",
                "model": self.model,
                "content": content,
                "stop_reason": null,
                "stop_sequence": null,
                "usage": usage(10, 1),
                "context_management": null,
            },
            "parent_tool_use_id": null,
            "session_id": self.session_id,
            "uuid": uuid(),
            "timestamp": timestamp(),
        })
    }

    /// A result event: the common fields, then `fields`.
    fn result_event(&self, fields: Value) -> Value {
        let elapsed = self.start.elapsed().as_millis() as u64;
        let mut r = json!({
            "type": "result",
            "duration_ms": elapsed,
            "duration_api_ms": elapsed / 2,
            "session_id": self.session_id,
            "total_cost_usd": 0,
            "usage": usage(0, 0),
            "modelUsage": {},
            "permission_denials": [],
            "fast_mode_state": "off",
            "uuid": uuid(),
        });
        if let Value::Object(f) = fields {
            for (k, v) in f {
                r[&k] = v;
            }
        }
        r
    }

    /// Emits a non-result message in the selected format.
    fn event(&mut self, ev: Value) -> io::Result<()> {
        match self.format {
            Format::StreamJson => self.write_line(&ev.to_string()),
            Format::Json if self.verbose => {
                self.collected.push(ev);
                Ok(())
            }
            _ => Ok(()),
        }
    }

    /// Emits the result in the selected format.
    fn result(&mut self, r: Value) -> io::Result<()> {
        let line = render_result(self.format, self.verbose, &mut self.collected, r);
        self.write_line(&line)
    }

    fn write_line(&mut self, line: &str) -> io::Result<()> {
        let mut out = self.out.lock();
        MID_LINE.store(true, Ordering::SeqCst);
        out.write_all(line.as_bytes())?;
        out.write_all(b"\n")?;
        out.flush()?;
        MID_LINE.store(false, Ordering::SeqCst);
        Ok(())
    }

    /// Prepares what SIGINT prints, then installs the handler.
    fn prepare_interrupt(&self) {
        let r = self.result_event(json!({
            "subtype": "error_during_execution",
            "is_error": true,
            "errors": ["Request was aborted."],
            "num_turns": 0,
            "stop_reason": null,
            "terminal_reason": "aborted",
        }));
        let mut collected = Vec::new();
        if self.format == Format::Json && self.verbose {
            collected.push(self.init_event());
        }
        let mut bytes = render_result(self.format, self.verbose, &mut collected, r).into_bytes();
        bytes.push(b'\n');
        if INTERRUPT_OUTPUT.set(bytes).is_ok() {
            sys::install_sigint();
        }
    }
}

/// The final output for `r`: its JSON, the JSON array of all messages, or its text.
fn render_result(format: Format, verbose: bool, collected: &mut Vec<Value>, r: Value) -> String {
    match format {
        Format::StreamJson => r.to_string(),
        Format::Json if verbose => {
            collected.push(r);
            Value::Array(std::mem::take(collected)).to_string()
        }
        Format::Json => r.to_string(),
        Format::Text => match r.get("result").and_then(Value::as_str) {
            Some(t) => t.to_owned(),
            None => r
                .get("errors")
                .and_then(Value::as_array)
                .map(|e| {
                    e.iter()
                        .filter_map(Value::as_str)
                        .collect::<Vec<_>>()
                        .join("\n")
                })
                .unwrap_or_default(),
        },
    }
}

fn spawn_grandchild(inherit: bool) -> io::Result<()> {
    let mut cmd = Command::new("sleep");
    cmd.arg("600").stdin(Stdio::null());
    if !inherit {
        cmd.stdout(Stdio::null()).stderr(Stdio::null());
    }
    let child = cmd.spawn()?;
    eprintln!("grandchild pid {}", child.id());
    // Not waited for: it outlives us unless the process group is killed.
    std::mem::forget(child);
    Ok(())
}

fn samples_dir() -> PathBuf {
    match std::env::var_os("FAKE_CLAUDE_SAMPLES_DIR") {
        Some(d) => PathBuf::from(d),
        None => Path::new(env!("CARGO_MANIFEST_DIR")).join("../../shared/claude-cli-samples"),
    }
}

/// `FAKE_CLAUDE_EXIT` is applied by the caller; this reads `exit=N` for the file from `INDEX`.
fn index_exit_code(path: &Path) -> Option<i32> {
    let name = path.file_name()?.to_str()?;
    let index = std::fs::read_to_string(path.parent()?.join("INDEX")).ok()?;
    index.lines().find_map(|l| {
        let mut parts = l.split_whitespace();
        (parts.next()? == name).then_some(())?;
        parts.find_map(|p| p.strip_prefix("exit=")?.parse().ok())
    })
}

fn usage(input: u64, output: u64) -> Value {
    json!({
        "input_tokens": input,
        "cache_creation_input_tokens": 0,
        "cache_read_input_tokens": 0,
        "output_tokens": output,
        "server_tool_use": {"web_search_requests": 0, "web_fetch_requests": 0},
        "service_tier": "standard",
    })
}

fn uuid() -> String {
    uuid::Uuid::new_v4().to_string()
}

fn timestamp() -> String {
    Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Millis, true)
}

/// Now + 1 h, rounded to the nearest hour (unix seconds).
fn default_reset_epoch() -> i64 {
    let t = Utc::now().timestamp() + 3600;
    (t + 1800) / 3600 * 3600
}

/// The reset as the CLI writes it: `7am (UTC)`, `7:04am (UTC)`, `Nov 26, 1:03pm (UTC)`,
/// `Jan 23, 2027, 5:46am (UTC)` — in `TZ` (named as given), or UTC.
fn format_reset(epoch: i64) -> String {
    let zone = std::env::var("TZ")
        .ok()
        .map(|z| z.trim_start_matches(':').to_owned())
        .filter(|z| !z.is_empty());
    match zone {
        Some(z) if z != "UTC" => match Local.timestamp_opt(epoch, 0).single() {
            Some(t) => format!("{} ({z})", format_wall(t, Local::now())),
            None => format!("{} (UTC)", format_wall(utc(epoch), Utc::now())),
        },
        _ => format!("{} (UTC)", format_wall(utc(epoch), Utc::now())),
    }
}

fn utc(epoch: i64) -> DateTime<Utc> {
    Utc.timestamp_opt(epoch, 0)
        .single()
        .unwrap_or_else(Utc::now)
}

fn format_wall<Tz: TimeZone>(t: DateTime<Tz>, now: DateTime<Tz>) -> String {
    let (pm, h12) = t.hour12();
    let time = if t.minute() == 0 {
        format!("{h12}{}", if pm { "pm" } else { "am" })
    } else {
        format!("{h12}:{:02}{}", t.minute(), if pm { "pm" } else { "am" })
    };
    if t.clone().signed_duration_since(now.clone()) < chrono::Duration::hours(24) {
        return time;
    }
    const MONTHS: [&str; 12] = [
        "Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec",
    ];
    let month = MONTHS[t.month0() as usize];
    if t.year() != now.year() {
        format!("{month} {}, {}, {time}", t.day(), t.year())
    } else {
        format!("{month} {}, {time}", t.day())
    }
}
