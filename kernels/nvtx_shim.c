/* The NVTX shim: NVTX 3 is header-only (its functions are defined in every file that includes
 * nvToolsExt.h), so Rust reaches it through these two C functions, compiled by build.rs with the cc
 * crate. Without a tool (nsys, Nsight Systems) injected into the process, each call costs an
 * indirect call to an empty function: NVTX looks for a tool once, at the first call. */
#include <nvtx3/nvToolsExt.h>

/* Opens a range named `name` (a NUL-terminated string) on the calling thread. */
void tg_nvtx_push(const char *name) { nvtxRangePushA(name); }

/* Closes the innermost open range of the calling thread. */
void tg_nvtx_pop(void) { nvtxRangePop(); }
