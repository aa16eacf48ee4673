"""COCO JSON structure checks (categories, images) shared by the panoptic and instances readers."""

from __future__ import annotations

from typing import Any

from maskformer.data.base import Problems, check_type
from maskformer.data.coco import check_mask_size


def parse_categories(data: Any, where: str, problems: Problems) -> list[dict[str, Any]]:
    """Validated ``categories`` list (ids unique integers); problems are recorded, not raised."""
    if not isinstance(data, dict):
        problems.add(f"{where}: the top level must be a JSON object, got {type(data).__name__}")
        return []
    cats = data.get("categories")
    if not isinstance(cats, list) or not cats:
        problems.add(f"{where}: 'categories' must be a non-empty list, got {cats!r}"[:300])
        return []
    out, seen, names = [], set(), {}
    for j, c in enumerate(cats):
        at = f"{where}: categories[{j}]"
        if not check_type(c, dict, at, problems) or not check_type(
            c.get("id"), int, f"{at}.id", problems
        ):
            continue
        if c["id"] in seen:
            problems.add(f"{at}.id {c['id']} is a duplicate category id")
            continue
        if "name" in c and not isinstance(c["name"], str):
            problems.add(f"{at}.name must be a string, got {c['name']!r}"[:300])
            continue
        # Two categories of one name would become one class wherever classes go by name (the
        # app's workspace): a stuff "sky" would turn into a thing. Refused, not merged.
        name = category_name(c).strip()
        if name in names:
            problems.add(
                f"{at} has the name {name[:100]!r} of categories[{names[name]}]; category "
                "names must be unique"
            )
            continue
        names[name] = j
        seen.add(c["id"])
        out.append(c)
    return out


def category_name(category: dict[str, Any]) -> str:
    """A category's name; ``class_<id>`` when it has none."""
    return str(category.get("name", f"class_{category['id']}"))


def parse_images(
    data: dict[str, Any], where: str, problems: Problems, need_size: bool
) -> dict[Any, dict[str, Any]]:
    """``images`` by id; each has an id (int or str), a file_name, and (if needed) height/width."""
    images = data.get("images")
    if not isinstance(images, list):
        problems.add(f"{where}: 'images' must be a list, got {images!r}"[:300])
        return {}
    out: dict[Any, dict[str, Any]] = {}
    for j, im in enumerate(images):
        at = f"{where}: images[{j}]"
        if not check_type(im, dict, at, problems):
            continue
        ok = check_type(im.get("id"), (int, str), f"{at}.id", problems)
        ok &= check_type(im.get("file_name"), str, f"{at}.file_name", problems)
        for key in ("height", "width"):
            if need_size or key in im:
                ok &= check_type(im.get(key), int, f"{at}.{key}", problems)
        if ok and "height" in im and "width" in im:
            try:  # a declared size is what masks get allocated at: refuse absurd ones here
                check_mask_size(im["height"], im["width"])
            except ValueError as e:
                problems.add(f"{at} ({im['file_name'][:100]}): {e}")
                ok = False
        if not ok:
            continue
        if im["id"] in out:
            problems.add(f"{at}.id {im['id']!r} is a duplicate image id")
            continue
        out[im["id"]] = im
    return out
