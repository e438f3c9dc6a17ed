//! The NVTX ranges as a tool sees them. This test binary links a tiny NVTX tool statically: NVTX 3
//! looks for a C symbol `InitializeInjectionNvtx2_fnptr` (a weak symbol in the headers, which a
//! strong definition overrides) at the first NVTX call, calls it with NVTX's export table, and the
//! tool replaces the RangePushA and RangePop entries of the core function table with its own
//! functions, which log every push and pop. This is the mechanism Nsight Systems uses (through
//! `NVTX_INJECTION64_PATH` instead of a static symbol).
//!
//! In a build with NVTX (`gpu::nvtx::ENABLED`), the ranges must reach the tool with their names,
//! nested and closed in order; in a build without it, the tool must see nothing at all.
//! One test only: NVTX initialises once per process, at its first call.

use std::ffi::{c_char, c_int, c_uint, c_void, CStr};
use std::sync::Mutex;

use train_gpt2_cuda::gpu::nvtx;
use train_gpt2_cuda::profile::Family;

/// Every push ("push NAME") and pop ("pop") the tool received.
static LOG: Mutex<Vec<String>> = Mutex::new(Vec::new());
/// Whether NVTX called the tool's initialisation.
static INITIALISED: Mutex<bool> = Mutex::new(false);

/// NVTX_ETID_CALLBACKS and NVTX_CB_MODULE_CORE (nvtx3/nvtxDetail/nvtxTypes.h).
const ETID_CALLBACKS: u32 = 1;
const CB_MODULE_CORE: c_int = 1;
/// NVTX_CBID_CORE_RangePushA and NVTX_CBID_CORE_RangePop.
const CBID_RANGE_PUSH_A: usize = 9;
const CBID_RANGE_POP: usize = 11;

type FunctionPointer = Option<unsafe extern "C" fn()>;
type GetExportTable = unsafe extern "C" fn(u32) -> *const c_void;

/// NvtxExportTableCallbacks.
#[repr(C)]
struct ExportTableCallbacks {
    struct_size: usize,
    get_module_function_table:
        Option<unsafe extern "C" fn(c_int, *mut *mut *mut FunctionPointer, *mut c_uint) -> c_int>,
}

extern "C" fn tool_push(message: *const c_char) -> c_int {
    // SAFETY: NVTX passes the caller's NUL-terminated message through unchanged.
    let name = unsafe { CStr::from_ptr(message) }.to_string_lossy();
    let mut log = LOG.lock().unwrap();
    log.push(format!("push {name}"));
    log.len() as c_int
}

extern "C" fn tool_pop() -> c_int {
    LOG.lock().unwrap().push("pop".to_string());
    0
}

/// The tool's entry point: installs tool_push and tool_pop; 1 on success.
unsafe extern "C" fn tool_init(get_export_table: Option<GetExportTable>) -> c_int {
    *INITIALISED.lock().unwrap() = true;
    let Some(get) = get_export_table else {
        return 0;
    };
    // SAFETY: NVTX's export table function, asked for the callbacks table, returns a pointer to
    // its NvtxExportTableCallbacks (or null).
    let callbacks = unsafe { get(ETID_CALLBACKS) } as *const ExportTableCallbacks;
    if callbacks.is_null() {
        return 0;
    }
    // SAFETY: non-null, and NVTX's table lives for the whole program.
    let Some(get_table) = (unsafe { &*callbacks }).get_module_function_table else {
        return 0;
    };
    let mut table: *mut *mut FunctionPointer = std::ptr::null_mut();
    let mut size: c_uint = 0;
    // SAFETY: the documented call: fills in the core module's table of pointers to NVTX's own
    // function-pointer slots, and its size.
    if unsafe { get_table(CB_MODULE_CORE, &mut table, &mut size) } == 0
        || table.is_null()
        || (size as usize) <= CBID_RANGE_POP
    {
        return 0;
    }
    // SAFETY: entries 9 and 11 of the core table point at the RangePushA and RangePop slots
    // (bounds checked above); the functions stored have the C signatures NVTX calls them with,
    // int(const char*) and int(void), cast to NVTX's generic function pointer type.
    unsafe {
        let push = tool_push as extern "C" fn(*const c_char) -> c_int;
        let pop = tool_pop as extern "C" fn() -> c_int;
        **table.add(CBID_RANGE_PUSH_A) = Some(std::mem::transmute::<
            extern "C" fn(*const c_char) -> c_int,
            unsafe extern "C" fn(),
        >(push));
        **table.add(CBID_RANGE_POP) = Some(std::mem::transmute::<
            extern "C" fn() -> c_int,
            unsafe extern "C" fn(),
        >(pop));
    }
    1
}

/// The static injection NVTX looks for (see the file comment).
#[allow(non_upper_case_globals)]
#[no_mangle]
pub static InitializeInjectionNvtx2_fnptr: unsafe extern "C" fn(Option<GetExportTable>) -> c_int =
    tool_init;

#[test]
fn ranges_reach_an_nvtx_tool_nested_and_named() {
    {
        let _phase = nvtx::range(c"forward");
        for l in [0, 11] {
            let _layer = nvtx::range(nvtx::layer_name(l));
            let _kernel = nvtx::range(Family::Matmul.label());
        }
        let _kernel = nvtx::range(Family::GlobalNorm.label());
    }
    let log = LOG.lock().unwrap().clone();
    if nvtx::ENABLED {
        assert!(*INITIALISED.lock().unwrap(), "NVTX never called the tool");
        assert_eq!(
            log,
            [
                "push forward",
                "push layer 0",
                "push matmul",
                "pop",
                "pop",
                "push layer 11",
                "push matmul",
                "pop",
                "pop",
                "push global_norm",
                "pop",
                "pop"
            ]
        );
    } else {
        // no NVTX in this build: nothing may reach a tool
        assert!(log.is_empty(), "{log:?}");
        assert!(!*INITIALISED.lock().unwrap());
    }
}
