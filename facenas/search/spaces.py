"""Search spaces (ConfigSpace) by name, and the mapping of a configuration onto a training YAML.

* ``hyperfd_hpo``: HyperFD Table 2, 216 configurations (optimizer, learning rate, min crop
  ratio, positive IoU, box-loss weight, negative:positive ratio).
* ``frnas_joint``: FR-NAS Table 6: three searchable-DPN edges in 0..8, head, optimizer, and a
  learning rate conditional on the optimizer (Adam/AdamW log-uniform [1e-4, 1e-2], SGD
  log-uniform [0.09, 0.8]).
* ``frnas_phase1``: the FR-NAS study's 29 timm backbones x head x optimizer x learning-rate
  schedule (the grid of ``analysis_vgg_val_phase1.csv``).
* ``hyperfd_nas``: HyperFD Table 3, the ProxylessNAS x0.5 detector backbones: the depth of
  stages 2-6 (``depth_s<s>``) and every layer's expand ratio and kernel (``s<s>_l<l>_expand``,
  ``s<s>_l<l>_kernel``), the layers beyond a stage's depth inactive. A mapping takes the
  architecture's canonical string as the derived value ``arch``
  (``model.init_args.backbone: "proxyless_x05:{arch}"``).
* ``hyperfd_joint``: ``hyperfd_hpo`` x ``hyperfd_nas`` in one space.
* any ConfigSpace JSON file (``space: path/to/space.json``).
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from ConfigSpace import (
    Categorical,
    ConfigurationSpace,
    EqualsCondition,
    Float,
    InCondition,
)

from facenas.core.registry import Registry

SPACES: Registry[Callable[[int], ConfigurationSpace]] = Registry("search space")

FRNAS_BACKBONES = (  # the 29 timm models of analysis_vgg_val_phase1.csv
    "coat_lite_small",
    "convit_base",
    "cspdarknet53",
    "dla102x2",
    "dpn107",
    "ese_vovnet39b",
    "fbnetv3_g",
    "ghostnet_100",
    "gluon_inception_v3",
    "gluon_xception65",
    "hrnet_w64",
    "ig_resnext101_32x8d",
    "inception_resnet_v2",
    "inception_v4",
    "jx_nest_base",
    "legacy_senet154",
    "mobilenetv3_large_100",
    "resnetrs101",
    "rexnet_200",
    "selecsls60b",
    "swin_base_patch4_window7_224",
    "tf_efficientnet_b7_ns",
    "tnt_s_patch16_224",
    "twins_svt_large",
    "vgg19",
    "vgg19_bn",
    "visformer_small",
    "xception",
    "xception65",
)


register_space = SPACES.register


@register_space("hyperfd_hpo")
def hyperfd_hpo(seed: int = 0, third_lr: float = 3e-3, name: str = "hyperfd_hpo") -> ConfigurationSpace:
    """HyperFD Table 2: 2 x 3 x 2 x 3 x 3 x 2 = 216 configurations (optimizer names as the
    models take them: ``sgd``, ``adam``).

    The learning rates are {3e-4, 1e-3, 3e-3}: Table 2 prints 3e-2 as the third, but the best
    configurations its Table 8 lists include ``lr:3e-03`` three times, which 3e-2 cannot
    produce (../shared/design/HYPERFD.md). ``hyperfd_hpo_lr3e-2`` is the space as Table 2
    prints it.
    """
    cs = ConfigurationSpace(name=name, seed=seed)
    cs.add(
        [
            Categorical("optimizer", ["sgd", "adam"]),
            Categorical("lr", [3e-4, 1e-3, third_lr], ordered=True),
            Categorical("min_crop_ratio", [0.3, 0.55], ordered=True),
            Categorical("pos_iou", [0.4, 0.5, 0.6], ordered=True),
            Categorical("loc_weight", [2.0, 4.0, 8.0], ordered=True),
            Categorical("neg_pos_ratio", [2.0, 7.0], ordered=True),
        ]
    )
    return cs


@register_space("hyperfd_hpo_lr3e-2")
def hyperfd_hpo_table2(seed: int = 0) -> ConfigurationSpace:
    """:func:`hyperfd_hpo` with Table 2's printed third learning rate, 3e-2."""
    return hyperfd_hpo(seed, third_lr=3e-2, name="hyperfd_hpo_lr3e-2")


def _nas_parameters() -> list[Any]:
    """The hyperparameters and conditions of HyperFD's NAS space (stage 7 has depth 1)."""
    from facenas.models.detection import proxyless as px

    items: list[Any] = []
    for stage, depths in zip(px.STAGES, px.DEPTHS):
        depth = Categorical(f"depth_s{stage}", list(depths), ordered=True) if len(depths) > 1 else None
        if depth is not None:
            items.append(depth)
        for layer in range(1, max(depths) + 1):
            choices = [
                Categorical(f"s{stage}_l{layer}_expand", list(px.EXPANDS), ordered=True),
                Categorical(f"s{stage}_l{layer}_kernel", list(px.KERNELS), ordered=True),
            ]
            items += choices
            if depth is not None and layer > min(depths):
                items += [InCondition(c, depth, [d for d in depths if d >= layer]) for c in choices]
    return items


def nas_arch(config: Mapping[str, Any]) -> str:
    """The canonical architecture string of a ``hyperfd_nas`` (or ``hyperfd_joint``)
    configuration."""
    from facenas.models.detection import proxyless as px

    stages = []
    for stage, depths in zip(px.STAGES, px.DEPTHS):
        depth = int(config.get(f"depth_s{stage}", depths[0]) if len(depths) > 1 else depths[0])
        stages.append(
            tuple(
                px.Layer(int(config[f"s{stage}_l{i}_expand"]), int(config[f"s{stage}_l{i}_kernel"]))
                for i in range(1, depth + 1)
            )
        )
    return str(px.ProxylessArch(tuple(stages)))


def nas_config(arch: str) -> dict[str, Any]:
    """The ``hyperfd_nas`` parameters of an architecture string (the inverse of :func:`nas_arch`)."""
    from facenas.models.detection import proxyless as px

    parsed = px.ProxylessArch.parse(arch)
    config: dict[str, Any] = {}
    for stage, depths, layers in zip(px.STAGES, px.DEPTHS, parsed.stages):
        if len(depths) > 1:
            config[f"depth_s{stage}"] = len(layers)
        for i, layer in enumerate(layers, 1):
            config[f"s{stage}_l{i}_expand"] = layer.expand
            config[f"s{stage}_l{i}_kernel"] = layer.kernel
    return config


# values a mapping may use like parameters, computed from the configuration: name -> (the
# parameters it is computed from, the function)
DERIVED: dict[str, tuple[re.Pattern[str], Callable[[Mapping[str, Any]], Any]]] = {
    "arch": (re.compile(r"depth_s\d|s\d_l\d_(expand|kernel)"), nas_arch),
}


def derived_names(parameters: Any) -> dict[str, list[str]]:
    """The :data:`DERIVED` values computable from these parameter names, with the names each
    is computed from."""
    out = {}
    for name, (pattern, _) in DERIVED.items():
        sources = [p for p in parameters if pattern.fullmatch(p)]
        if sources:
            out[name] = sources
    return out


def with_derived(config: Mapping[str, Any]) -> dict[str, Any]:
    """The configuration plus the :data:`DERIVED` values it has the parameters for."""
    out = dict(config)
    for name in derived_names(config):
        if name not in out:
            out[name] = DERIVED[name][1](config)
    return out


def compact_config(config: Mapping[str, Any]) -> dict[str, Any]:
    """The configuration for people to read: the parameters a :data:`DERIVED` value is computed
    from replaced by that value (``arch=d2-1-3-4-2-1:...`` for the 30-odd NAS parameters)."""
    derived = derived_names(config)
    consumed = {p for sources in derived.values() for p in sources}
    out = {k: v for k, v in config.items() if k not in consumed}
    out.update({name: DERIVED[name][1](config) for name in derived})
    return out


@register_space("hyperfd_nas")
def hyperfd_nas(seed: int = 0) -> ConfigurationSpace:
    """HyperFD Table 3: ~1.4e15 ProxylessNAS x0.5 architectures (see
    :mod:`facenas.models.detection.proxyless`); every configuration is a valid architecture and
    distinct configurations give distinct :func:`nas_arch` strings."""
    cs = ConfigurationSpace(name="hyperfd_nas", seed=seed)
    cs.add(_nas_parameters())
    return cs


@register_space("hyperfd_joint")
def hyperfd_joint(seed: int = 0) -> ConfigurationSpace:
    """HyperFD's HPO space and NAS space in one: any backend searches both at once."""
    cs = ConfigurationSpace(name="hyperfd_joint", seed=seed)
    cs.add(list(hyperfd_hpo(seed).values()))
    cs.add(_nas_parameters())
    return cs


def pool(n: int, seed: int = 0) -> list[str]:
    """``n`` distinct architectures of ``hyperfd_nas`` drawn uniformly (HyperFD: a candidate
    pool of 200 per dataset), as canonical strings, the same for the same seed; a smaller pool
    is the start of a larger one."""
    space = hyperfd_nas(seed)
    archs: dict[str, None] = {}
    while len(archs) < n:
        archs.setdefault(nas_arch(space.sample_configuration()))
    return list(archs)


@register_space("frnas_joint")
def frnas_joint(seed: int = 0) -> ConfigurationSpace:
    """FR-NAS Table 6: 729 DPN architectures x 3 heads x 3 optimizers x conditional learning rate."""
    cs = ConfigurationSpace(name="frnas_joint", seed=seed)
    edges = [Categorical(f"edge{i}", [str(c) for c in range(9)]) for i in (1, 2, 3)]
    head = Categorical("head", ["CosFace", "ArcFace", "MagFace"])
    optimizer = Categorical("optimizer", ["adam", "adamw", "sgd"])
    lr_adam = Float("lr_adam", (1e-4, 1e-2), log=True, default=1e-3)
    lr_sgd = Float("lr_sgd", (0.09, 0.8), log=True, default=0.1)
    cs.add(
        [
            *edges,
            head,
            optimizer,
            lr_adam,
            lr_sgd,
            InCondition(lr_adam, optimizer, ["adam", "adamw"]),
            EqualsCondition(lr_sgd, optimizer, "sgd"),
        ]
    )
    return cs


@register_space("frnas_phase1")
def frnas_phase1(seed: int = 0) -> ConfigurationSpace:
    """The FR-NAS study's first phase: 29 timm backbones x head x optimizer x schedule
    (``default``: the optimizer's default learning rate; ``cosine``: 0.1 for SGD, 0.001 for
    AdamW with a cosine schedule)."""
    cs = ConfigurationSpace(name="frnas_phase1", seed=seed)
    cs.add(
        [
            Categorical("backbone", list(FRNAS_BACKBONES)),
            Categorical("head", ["ArcFace", "CosFace", "MagFace"]),
            Categorical("optimizer", ["SGD", "AdamW"]),
            Categorical("schedule", ["default", "cosine"]),
        ]
    )
    return cs


def load_space(space: str | Path, seed: int = 0) -> ConfigurationSpace:
    """A registered space by name, or a ConfigSpace JSON file."""
    if str(space) in SPACES:
        return SPACES.get(str(space))(seed)
    path = Path(space)
    if path.suffix == ".json" and path.is_file():
        import warnings

        from ConfigSpace.read_and_write import json as cs_json

        try:
            with warnings.catch_warnings():  # files written by ConfigSpace 0.6 use older field names
                warnings.simplefilter("ignore", UserWarning)
                cs = cs_json.read(path.read_text())
        except (OSError, UnicodeDecodeError) as exc:
            raise ValueError(f"search space file {path} cannot be read: {exc}") from None
        except (ValueError, KeyError, TypeError, AttributeError, IndexError) as exc:  # bad JSON, or not a space
            reason = " ".join(str(exc).split())[:200] or type(exc).__name__
            what = "missing field " if isinstance(exc, KeyError) else ""
            raise ValueError(f"search space file {path} is not a valid ConfigSpace JSON: {what}{reason}") from None
        cs.seed(seed)
        return cs
    raise ValueError(f"unknown search space {space!r}: not one of {', '.join(SPACES)} nor a ConfigSpace .json file")


_FIELD = re.compile(r"\{([A-Za-z_][A-Za-z0-9_]*)\}")


def apply_mapping(config: Mapping[str, Any], mapping: Mapping[str, str]) -> dict[str, Any]:
    """Turn a configuration into dotted training-YAML overrides.

    ``mapping`` maps a dotted key to a parameter name (its value is used as is) or a template
    with ``{param}`` fields (formatted as a string), e.g.::

        model.init_args.lr: lr
        model.init_args.backbone: "dpn_search_small_{edge1}{edge2}{edge3}"

    Several keys may take the same parameter; a key whose parameters are all inactive in this
    configuration (conditional ones) is left out, and when several keys name one dotted key
    the first active one wins (``model.init_args.lr`` from ``lr_adam`` or ``lr_sgd``).
    :data:`DERIVED` values (``arch``) are used like parameters.
    """
    out: dict[str, Any] = {}
    config = with_derived(config)
    for key, source in mapping.items():
        target = key.split("|")[0].strip()
        if target in out:
            continue
        names = _FIELD.findall(source) if isinstance(source, str) else []
        if names:
            if all(n in config and config[n] is not None for n in names):
                out[target] = _FIELD.sub(lambda m: str(config[m.group(1)]), source)
        elif source in config and config[source] is not None:
            value = config[source]
            out[target] = value.item() if hasattr(value, "item") else value
    return out


def mapping_sources(source: Any) -> list[str]:
    """The parameter names a mapping source uses: a template's ``{fields}``, else the name."""
    if not isinstance(source, str):
        return []
    return _FIELD.findall(source) or [source]


def check_mapping(mapping: Mapping[str, str], space: ConfigurationSpace) -> list[str]:
    """Refuse a mapping source that names no parameter of ``space`` (its key would silently
    keep the training default while reports show the sampled value); return the space's
    parameters that no key uses."""
    derived = derived_names(space.keys())
    names = set(space.keys()) | set(derived)
    for key, source in mapping.items():
        used = mapping_sources(source)
        if not used:
            raise ValueError(f"mapping {key}: {source!r} is neither a parameter of the space nor a template")
        unknown = [n for n in used if n not in names]
        if unknown:
            raise ValueError(
                f"mapping {key}: {', '.join(repr(n) for n in unknown)} is not a parameter of space "
                f"{space.name!r} (its parameters: {', '.join(sorted(names))})"
            )
    used = {n for source in mapping.values() for n in mapping_sources(source)}
    used |= {source for name in used & set(derived) for source in derived[name]}
    return sorted(names - used - set(derived))


def training_key_error(key: str, config: Mapping[str, Any]) -> str | None:
    """Why dotted ``key`` is not a key a trial's training config accepts (None when it is).

    ``config`` is the resolved training config (:func:`facenas.training.resolved_config`): every
    section, trainer argument and constructor argument of a configured class is there with its
    default, so a key is walked through it. jsonargparse's shorthand ``model.<arg>`` for
    ``model.init_args.<arg>`` is followed. Inside a dict-valued argument (``head_args``), a list
    or a section left empty (``optimizer: null``) nothing more can be checked, and the key is
    accepted.
    """
    parts = key.split(".")
    node: Any = config
    owner = "a training config"  # what the keys of `node` belong to, when they are all known
    i = 0
    while i < len(parts):
        part = parts[i]
        if isinstance(node, dict) and "class_path" in node and part not in ("class_path", "dict_kwargs"):
            owner = str(node["class_path"]).rpartition(".")[2]
            node = node.get("init_args") or {}
            if part == "init_args":  # else jsonargparse's shorthand: model.lr is model.init_args.lr
                i += 1
                continue
        if isinstance(node, list) and part.isdigit() and int(part) < len(node):
            node, owner, i = node[int(part)], None, i + 1
            continue
        if isinstance(node, dict) and part in node:
            top = node is config
            node, i = node[part], i + 1
            # a top-level group (trainer) lists all its arguments; an argument's dict value does not
            owner = ("Trainer" if part == "trainer" else part) if top and isinstance(node, dict) else None
            continue
        if node is not None and not isinstance(node, dict):
            return f"{'.'.join(parts[:i])} is a value in the base config ({node!r}), not a group with key {part!r}"
        if owner is None or node is None:
            return None  # a free-form dict (an argument's value), a list item or an unset section
        import difflib

        close = difflib.get_close_matches(part, sorted(node), n=3)
        hint = f" (did you mean {' or '.join(repr(c) for c in close)}?)" if close else ""
        if node is config:
            return f"{part!r} is not a section of a training config ({', '.join(sorted(config))}){hint}"
        return f"{owner} takes no argument {part!r}{hint}"
    return None


def check_training_keys(keys: Mapping[str, str], base: list[str], overrides: Mapping[str, Any] | None = None) -> Any:
    """Raise ValueError for the first dotted key (``{key: what it is}``, e.g. ``mapping
    key``) that a trial's training config would not take (see :func:`training_key_error`).
    The base YAMLs and ``overrides`` are parsed as ``facenas fit`` parses them: a key or value
    they give that fit refuses is one :class:`~facenas.core.errors.UserError`. Returns the
    parsed config."""
    from facenas.training.config import resolved_config

    config = resolved_config(base, overrides)
    for key, what in keys.items():
        error = training_key_error(key, config)
        if error is not None:
            raise ValueError(f"{what} {key} is not a key of the training config ({', '.join(base)}): {error}")
    return config


def config_key(config: Mapping[str, Any]) -> str:
    """A configuration as a canonical string (the same for a proposal and its stored copy)."""
    import json

    from facenas.core.values import plain

    return json.dumps({k: plain(v) for k, v in config.items()}, sort_keys=True)


_GRID_LIMIT = 100_000


def finite_configurations(space: ConfigurationSpace) -> list[dict[str, Any]] | None:
    """Every configuration of a finite space (categorical, ordinal, constant and integer
    parameters; conditions and forbidden clauses applied), or None for a space with a float
    parameter or more than 100,000 configurations."""
    from ConfigSpace.hyperparameters import (
        CategoricalHyperparameter,
        Constant,
        IntegerHyperparameter,
        OrdinalHyperparameter,
    )
    from ConfigSpace.util import generate_grid

    from facenas.core.values import plain

    size, steps = 1, {}
    for hp in space.values():
        if isinstance(hp, CategoricalHyperparameter):
            n = len(hp.choices)
        elif isinstance(hp, OrdinalHyperparameter):
            n = len(hp.sequence)
        elif isinstance(hp, Constant):
            n = 1
        elif isinstance(hp, IntegerHyperparameter) and not getattr(hp, "log", False):
            n = int(hp.upper) - int(hp.lower) + 1
            steps[hp.name] = n
        else:
            return None
        size *= n
        if size > _GRID_LIMIT:
            return None
    return [{k: plain(v) for k, v in dict(c).items()} for c in generate_grid(space, steps)]
