"""The CRAFT lab's code that runs INSIDE kernels. Sent there as source text, never imported there.

Two uses:
- captures in a student's kernel (grader/evidence.py runs `make_helpers(user, context)`):
  small helpers the capture expressions of the tasks (tasks/*.py) call on the student's
  variables: the secret probe, forward passes on copies, the model's BatchNorm state...
- replays in a trusted kernel (grader/replay.py runs `make_replay(context)`): the trusted
  model, rebuilt in the state a student's model was in, and a CraftTorch rebuilt from a
  student's captured values, so that the tasks' replay functions can recompute, with the very
  library the student used, what the student's own data should have given.

Self-contained on purpose: only the standard library at module level; numpy, torch, xplique
and craftlab are imported inside the functions, in the kernel.
"""

PROBE_SHAPE = (2, 3, 256, 256)   # two images, as check_g and check_h use
SMALL_SIDE = 128                 # its top-left 128x128 corner, as gf_check_split3 uses
SECRET_IMAGES = 3                # secret uint8 images the transform is checked on
IMAGE_SHAPE = (224, 224, 3)      # the lab's images (craftlab.IMAGE_SHAPE)


def probe_array(seed, side=None):
    """The batch's secret probe (float32, standard normal), or its top-left side x side corner."""
    import numpy as np

    probe = np.random.default_rng(seed).standard_normal(PROBE_SHAPE, dtype=np.float32)
    return np.ascontiguousarray(probe[..., :side, :side]) if side else probe


def secret_images_array(seed):
    """Secret uint8 images shaped like the lab's, for the transform: no answer can be tuned to them."""
    import numpy as np

    return np.random.default_rng([seed, 1]).integers(0, 256, size=(SECRET_IMAGES, *IMAGE_SHAPE), dtype=np.uint8)


def batchnorm_state(module):
    """(statistics, training flags) of every BatchNorm module, in module order: running mean,
    running variance and batch count of each, concatenated as float64; one flag per module."""
    import numpy as np
    import torch

    values, flags = [], []
    for m in module.modules():
        if isinstance(m, torch.nn.modules.batchnorm._BatchNorm):
            for stat in (m.running_mean, m.running_var, m.num_batches_tracked):
                values.append(np.atleast_1d(stat.detach().double().cpu().numpy()))
            flags.append(bool(m.training))
    return (np.concatenate(values) if values else np.zeros(0)), np.asarray(flags, dtype=bool)


def thread_counts():
    """[torch's intra-op threads, the BLAS library's threads]: both change a computation's last bits."""
    import threadpoolctl
    import torch

    blas = [lib["num_threads"] for lib in threadpoolctl.threadpool_info() if lib.get("user_api") == "blas"]
    return [torch.get_num_threads(), blas[0] if blas else 1]


# torchvision transforms a replay may rebuild from their captured description (transform_spec):
# deterministic ones only, with plain parameters.
REBUILDABLE = ("ToPILImage", "Resize", "CenterCrop", "ToTensor", "Normalize", "PILToTensor",
               "ConvertImageDtype", "Grayscale", "Pad", "ToImage", "ToDtype")


def transform_spec(transform):
    """A description of a torchvision transform (a Compose, or one transform) as JSON text: each
    step's class and its plain attributes, enough for rebuild_transform to make it again."""
    import enum
    import json

    def plain(value):
        if isinstance(value, enum.Enum):
            return {"enum": f"{type(value).__module__}.{type(value).__qualname__}", "name": value.name}
        if isinstance(value, (bool, int, float, str)) or value is None:
            return value
        if isinstance(value, (list, tuple)):
            return [plain(v) for v in value]
        if hasattr(value, "dtype") and hasattr(value, "tolist") and getattr(value, "ndim", 1) <= 1:
            return value.tolist()
        if type(value).__module__ == "torch" and type(value).__name__ == "dtype":
            return {"dtype": str(value)}
        raise TypeError(f"{type(value).__name__} is not a plain parameter")

    steps = getattr(transform, "transforms", None) if type(transform).__name__ == "Compose" else None
    out = []
    for step in (steps if steps is not None else [transform]):
        params = {k: plain(v) for k, v in vars(step).items() if not k.startswith("_") and k != "training"}
        out.append({"module": type(step).__module__, "name": type(step).__qualname__, "params": params})
    return json.dumps(out)


def rebuild_transform(spec):
    """The torchvision transform transform_spec described, rebuilt from REBUILDABLE classes only."""
    import importlib
    import json

    import torch
    from torchvision import transforms

    def value(v):
        if isinstance(v, dict) and "enum" in v:
            module, _, name = v["enum"].rpartition(".")
            if not module.startswith("torchvision."):
                raise ValueError(f"enum {v['enum']} is not torchvision's")
            return getattr(importlib.import_module(module), name)[v["name"]]
        if isinstance(v, dict) and "dtype" in v:
            return getattr(torch, v["dtype"].removeprefix("torch."))
        return [value(x) for x in v] if isinstance(v, list) else v

    steps = []
    for step in json.loads(spec):
        if not step["module"].startswith("torchvision.transforms") or step["name"] not in REBUILDABLE:
            raise ValueError(f"{step['module']}.{step['name']} cannot be rebuilt by the grader")
        cls = getattr(importlib.import_module(step["module"]), step["name"])
        obj = cls.__new__(cls)
        if isinstance(obj, torch.nn.Module):
            torch.nn.Module.__init__(obj)
        for k, v in step["params"].items():
            setattr(obj, k, tuple(value(v)) if isinstance(v, list) and k in ("size", "padding") else value(v))
        steps.append(obj)
    return transforms.Compose(steps)


def make_helpers(user, context):
    """What capture expressions may call, besides the student's variables (`user`)."""
    import copy
    import sys

    import numpy as np
    import torch

    seed = context["seed"]
    device = user.get("device", "cpu") if isinstance(user.get("device", "cpu"), str) else "cpu"
    memo = {}

    def probe(side=None):
        return torch.from_numpy(probe_array(seed, side)).to(device)

    def out(module, x):
        """module in eval mode, on a copy (the student's module is untouched), under no_grad."""
        with torch.no_grad():
            return copy.deepcopy(module).eval()(x)

    def as_is(module, x):
        """module in the modes it is in (a copy: its BatchNorm statistics stay as they are)."""
        with torch.no_grad():
            return copy.deepcopy(module)(x)

    def first(n, side=None):
        if (n, side) not in memo:
            memo[n, side] = out(torch.nn.Sequential(*list(user["model"].children())[:n]), probe(side))
        return memo[n, side]

    def transform_all(transform, images):
        return torch.stack([transform(img) for img in images])

    def recorder():
        return sys.modules["xplique.concepts"].CraftTorch._craft_lab_recorder

    def fit_rng():
        state = recorder().fit_rng_states[-1]
        return np.concatenate([np.asarray(state[1], dtype=np.int64), np.asarray(state[2:4], dtype=np.int64)])

    def bn(module):
        return batchnorm_state(module)[0]

    def bn_train(module):
        return batchnorm_state(module)[1]

    return dict(torch=torch, probe=probe, out=out, as_is=as_is, first=first, transform_all=transform_all,
                secret_images=lambda: secret_images_array(seed), recorder=recorder, fit_rng=fit_rng,
                bn=bn, bn_train=bn_train, threads=thread_counts, transform_spec=transform_spec,
                SMALL=SMALL_SIDE, CLASS=int(context["class_id"]),
                CraftTorch_=getattr(sys.modules.get("xplique.concepts"), "CraftTorch", None))


def make_replay(context):
    """What the tasks' replay functions use in a trusted kernel: the lab's model in a given state,
    and a CraftTorch rebuilt from a student's captured values."""
    import copy

    import numpy as np
    import torch
    from xplique.concepts import CraftTorch
    from xplique.concepts.craft import Factorization, Sensitivity

    import craftlab

    device = craftlab.pick_device()
    loaded = {}

    def model_in(stats=None, flags=None):
        """The lab's ResNet50 as craftlab loads it, in eval mode, then with these BatchNorm
        statistics and training flags (batchnorm_state's layout) when given."""
        if "model" not in loaded:
            loaded["model"] = craftlab.load_resnet50().eval()
        model = copy.deepcopy(loaded["model"])
        if stats is not None:
            modules = [m for m in model.modules() if isinstance(m, torch.nn.modules.batchnorm._BatchNorm)]
            if len(flags) != len(modules):
                raise ValueError(f"{len(flags)} BatchNorm flags for {len(modules)} modules")
            at = 0
            for m, flag in zip(modules, flags):
                for stat in (m.running_mean, m.running_var, m.num_batches_tracked):
                    size = stat.numel()
                    stat.copy_(torch.from_numpy(np.asarray(stats[at:at + size])).reshape(stat.shape).to(stat.dtype))
                    at += size
                m.train(bool(flag))
            if at != len(stats):
                raise ValueError(f"{len(stats)} BatchNorm statistics for a model that holds {at}")
        return model.to(device)

    def split(model, layers):
        """g: the first `layers` children; h: the rest, pooling, flatten and model.fc, reusing model's modules."""
        children = list(model.children())
        rest = children[layers:8]
        return (torch.nn.Sequential(*children[:layers]),
                torch.nn.Sequential(*rest, model.avgpool, torch.nn.Flatten(), model.fc))

    def threads(counts):
        import threadpoolctl

        torch.set_num_threads(int(counts[0]))
        threadpoolctl.threadpool_limits(int(counts[1]), user_api="blas")

    def craft(g, h, concepts, patch, batch):
        return CraftTorch(input_to_latent_model=g, latent_to_logit_model=h, number_of_concepts=int(concepts),
                          patch_size=int(patch), batch_size=int(batch), device=device)

    def fitted(c, inputs, w, class_id, crops=None, u=None, importances=None):
        """c as it stands after a fit that gave W = w (and crops, U), with these global importances."""
        from sklearn.decomposition import NMF

        w = np.asarray(w)
        reducer = NMF(n_components=c.number_of_concepts, alpha_W=1e-2)
        reducer.components_, reducer.n_components_, reducer.n_features_in_ = w, w.shape[0], w.shape[1]
        reducer._n_components = w.shape[0]
        c.factorization = Factorization(inputs=inputs, class_id=int(class_id), crops=crops, reducer=reducer,
                                        crops_u=u, concept_bank_w=w.astype(np.float32))
        if importances is not None:
            importances = np.asarray(importances)
            c.sensitivity = Sensitivity(importances, np.argsort(importances)[::-1])
        return c

    return dict(np=np, torch=torch, craftlab=craftlab, device=device, model_in=model_in, split=split,
                threads=threads, craft=craft, fitted=fitted, SEED=craftlab.SEED,
                probe=lambda side=None: torch.from_numpy(probe_array(context["seed"], side)).to(device))
