//! The GPU this process computes on, from the inside: a CUDA context (through candle), its
//! memory read with `cuMemGetInfo`, and a cleanup that really gives memory back.
//!
//! The key design decision: only a stage (or the demo's in-process mode) opens this backend,
//! never the supervisor, which reads GPUs through NVML and holds no context. Freeing in Rust is
//! dropping the last tensor, but candle allocates stream-ordered (`cuMemAllocAsync`): a freed
//! block returns to the device's memory pool, not the driver, until the stream synchronises and
//! the pool is trimmed. [`CudaBackend::trim`] does both, so a scope's verdict sees the truth.
//! `cuMemGetInfo` is device-wide: inside a stage placed on its own GPU, that is the stage's use.

use candle_core::cuda_backend::cudarc::driver::result;

use baton_memory::{BackendKind, DeviceSnapshot, MemoryBackend, MemoryError, ProcessMemory};

/// True in builds with the `cuda` feature.
pub const COMPILED: bool = true;

/// One GPU, seen from a process that holds a CUDA context on it.
pub struct CudaBackend {
    device: candle_core::Device,
    ordinal: usize,
}

impl CudaBackend {
    /// Creates (or joins) this process's CUDA context on GPU `ordinal`, through the one candle
    /// device this process has for that GPU.
    pub fn open(ordinal: usize) -> Result<Self, MemoryError> {
        let device = shared_device(ordinal).map_err(|e| MemoryError::Cuda {
            call: "create a CUDA context",
            message: e.to_string(),
        })?;
        Ok(CudaBackend { device, ordinal })
    }

    /// The candle device, for allocating tensors on it.
    pub fn device(&self) -> &candle_core::Device {
        &self.device
    }

    fn cuda(&self) -> &candle_core::CudaDevice {
        self.device.as_cuda_device().expect("opened on CUDA")
    }

    /// (free, total) bytes on the device, from `cuMemGetInfo`.
    pub fn mem_info(&self) -> Result<(u64, u64), MemoryError> {
        let stream = self.cuda().cuda_stream();
        stream
            .context()
            .bind_to_thread()
            .map_err(cuda_err("cuCtxSetCurrent"))?;
        let (free, total) = result::mem_get_info().map_err(cuda_err("cuMemGetInfo"))?;
        Ok((free as u64, total as u64))
    }
}

/// The process's one candle device on GPU `ordinal`, made on first use and kept until exit.
///
/// Every candle `Device::new_cuda` is a device of its own: its own stream, cuBLAS handle, random
/// generator and cache of kernel modules, each holding device memory. Were each stage (and the
/// prestart's warm-up, and a scope's trim) to open its own, the kernels a warm-up loaded would
/// not be the ones a stage runs, a trim would synchronise a stream the stage never used, and
/// what each left behind when dropped would be charged to the stage that ran next (seen as
/// +72 MiB after the scenes stage in monolithic mode on an H200). One device per GPU makes a
/// warm-up count, and the process's fixed cost a single one, paid before any baseline.
fn shared_device(ordinal: usize) -> Result<candle_core::Device, candle_core::Error> {
    static DEVICES: std::sync::Mutex<Vec<(usize, candle_core::Device)>> =
        std::sync::Mutex::new(Vec::new());
    let mut devices = DEVICES
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner());
    if let Some((_, device)) = devices.iter().find(|(o, _)| *o == ordinal) {
        return Ok(device.clone());
    }
    let device = candle_core::Device::new_cuda(ordinal)?;
    devices.push((ordinal, device.clone()));
    Ok(device)
}

fn cuda_err(call: &'static str) -> impl Fn(result::DriverError) -> MemoryError {
    move |e| MemoryError::Cuda {
        call,
        message: format!("{e:?}"),
    }
}

impl MemoryBackend for CudaBackend {
    fn kind(&self) -> BackendKind {
        BackendKind::Cuda
    }

    fn description(&self) -> String {
        format!(
            "cuda (GPU {} through this process's CUDA context)",
            self.ordinal
        )
    }

    fn snapshot(&self) -> Result<Vec<DeviceSnapshot>, MemoryError> {
        let (free, total) = self.mem_info()?;
        let used = total.saturating_sub(free);
        Ok(vec![DeviceSnapshot {
            backend: BackendKind::Cuda,
            index: 0,
            name: format!("CUDA device {}", self.ordinal),
            uuid: format!("cuda-{}", self.ordinal),
            total,
            used,
            free,
            reserved: 0,
            utilization: None,
            sensors: Default::default(),
            processes: vec![ProcessMemory {
                pid: std::process::id(),
                name: "this process".into(),
                bytes: Some(used),
            }],
        }])
    }

    fn context_overhead(&self) -> u64 {
        baton_memory::nvml::CUDA_CONTEXT_OVERHEAD
    }

    fn trim(&self) -> Result<(), MemoryError> {
        let stream = self.cuda().cuda_stream();
        let context = stream.context();
        context
            .bind_to_thread()
            .map_err(cuda_err("cuCtxSetCurrent"))?;
        // Frees are stream-ordered: they land when the stream (every stream of the context:
        // the weights loader copies on its own) has run past them.
        context
            .synchronize()
            .map_err(cuda_err("cuCtxSynchronize"))?;
        // SAFETY: the device handle comes from a live context bound to this thread; the pool is
        // the device's default pool, valid for the context's life; each attribute is a u64.
        unsafe {
            let pool = result::device::get_default_mem_pool(context.cu_device())
                .map_err(cuda_err("cuDeviceGetDefaultMemPool"))?;
            result::mem_pool::trim_to(pool, 0).map_err(cuda_err("cuMemPoolTrimTo"))?;
            let attribute = |attr| {
                let mut value = 0u64;
                result::mem_pool::get_attribute(pool, attr, (&raw mut value).cast())
                    .map(|()| value)
                    .map_err(cuda_err("cuMemPoolGetAttribute"))
            };
            use candle_core::cuda_backend::cudarc::driver::sys::CUmemPool_attribute as A;
            let reserved = attribute(A::CU_MEMPOOL_ATTR_RESERVED_MEM_CURRENT)?;
            let used = attribute(A::CU_MEMPOOL_ATTR_USED_MEM_CURRENT)?;
            tracing::debug!(
                "GPU {}'s memory pool after trimming: {reserved} bytes reserved, {used} in use",
                self.ordinal
            );
        }
        Ok(())
    }
}

/// Device memory filled with random data: a mock model's weights.
pub struct CudaBlock(#[allow(dead_code)] candle_core::Tensor);

impl CudaBackend {
    /// Allocates about `bytes` of device memory and fills it with random numbers (cuRAND), then
    /// waits until the work is done, so the memory is really resident when this returns.
    pub fn fill_random(&self, bytes: u64) -> Result<CudaBlock, MemoryError> {
        let floats = (bytes / 4) as usize;
        let tensor = candle_core::Tensor::rand(0f32, 1f32, floats, &self.device).map_err(|e| {
            MemoryError::Cuda {
                call: "allocate and fill a tensor",
                message: e.to_string(),
            }
        })?;
        self.device.synchronize().map_err(|e| MemoryError::Cuda {
            call: "cuStreamSynchronize",
            message: e.to_string(),
        })?;
        Ok(CudaBlock(tensor))
    }
}
