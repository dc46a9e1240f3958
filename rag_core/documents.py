"""Source discovery and parsing: a folder of files becomes partitions of normalised documents.

One partition per source file; a large `.jsonl` corpus is split into a few shards of many records, each
record keeping its own `_id`. Parsing never raises on bad content: an unreadable, corrupt, binary, empty
or mis-encoded file is returned as `Quarantined` with the reason, so it cannot fail the other files.
"""

from __future__ import annotations

import io
import json
import math
import re
import unicodedata
import zipfile
import zlib
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path

from rag_core.ids import content_hash, shard_key, source_key
from rag_core.tenants import InvalidTenant, validate_tenant

SUPPORTED_SUFFIXES = (".md", ".markdown", ".txt", ".html", ".htm", ".pdf", ".docx", ".jsonl", ".jsonl.gz")
TENANT_DIR_PREFIX = "tenant="


@dataclass(frozen=True)
class SourceUnit:
    """One Dagster partition: a whole file, or one shard of a `.jsonl` corpus."""

    partition_key: str
    path: Path
    relative_path: str
    tenant: str
    content_hash: str
    shard: int | None = None
    shard_count: int | None = None


@dataclass
class Document:
    doc_id: str
    partition_key: str
    tenant: str
    source: str
    title: str
    text: str
    parser: str
    modified_at: float
    content_hash: str
    redactions: dict[str, int] = field(default_factory=dict)


@dataclass(frozen=True)
class Quarantined:
    source: str
    reason: str
    record: str | None = None

    def describe(self) -> str:
        where = f"{self.source} ({self.record})" if self.record else self.source
        return f"{where}: {self.reason}"


@dataclass
class ParsedSource:
    unit: SourceUnit
    documents: list[Document]
    quarantined: list[Quarantined]


class QuarantineError(Exception):
    """Raised inside a parser for content that must not be indexed; the message is the user's fix."""


# Milvus counts VARCHAR limits in UTF-8 bytes (rag_core.store builds the schema from these).
DOC_ID_MAX_BYTES = 512
SOURCE_MAX_BYTES = 2048
TENANT_MAX_BYTES = 128
EXPANSION_FREE_MB = 20.0  # below this, any compression ratio is harmless


@dataclass(frozen=True)
class ParseLimits:
    """What one source may cost: bytes on disk, bytes once decompressed, characters per document.

    A 0.5 MB `.jsonl.gz` or a 0.2 MB `.docx` can expand to gigabytes (a decompression bomb); each limit
    quarantines the source with the setting that raises it, before the expansion happens.
    """

    max_file_mb: float = 50.0
    max_expanded_mb: float = 200.0
    max_compression_ratio: float = 100.0
    max_document_chars: int = 2_000_000

    def expanded_allowance(self, compressed_bytes: int) -> int:
        """How many bytes a compressed source of this size may expand to."""
        by_ratio = max(EXPANSION_FREE_MB * 1e6, self.max_compression_ratio * compressed_bytes)
        return int(min(self.max_expanded_mb * 1e6, by_ratio))

    def expansion_error(self, compressed_bytes: int, what: str) -> QuarantineError:
        return QuarantineError(
            f"{what} expands beyond {self.expanded_allowance(compressed_bytes) / 1e6:.0f} MB from "
            f"{compressed_bytes / 1e6:.2f} MB (a decompression bomb?) — split it, or raise RAG_MAX_EXPANDED_MB "
            f"({self.max_expanded_mb:g}) / RAG_MAX_COMPRESSION_RATIO ({self.max_compression_ratio:g})"
        )

    def check_characters(self, text: str) -> None:
        if len(text) > self.max_document_chars:
            raise QuarantineError(
                f"{len(text):,} characters is over the limit of {self.max_document_chars:,} per document — "
                "split the document, or raise RAG_MAX_DOCUMENT_CHARS"
            )


def utf8_length(text: str) -> int:
    return len(text.encode("utf-8", errors="surrogatepass"))


def gunzip(raw: bytes, limits: ParseLimits) -> bytes:
    """Decompress every gzip member, stopping as soon as the output passes the allowance."""
    allowance = limits.expanded_allowance(len(raw))
    parts, size, remaining = [], 0, raw
    try:
        while remaining:
            decompressor = zlib.decompressobj(wbits=zlib.MAX_WBITS | 16)
            data = remaining
            while data:
                part = decompressor.decompress(data, allowance - size + 1)
                size += len(part)
                parts.append(part)
                if size > allowance:
                    raise limits.expansion_error(len(raw), "the gzip file")
                data = decompressor.unconsumed_tail
            if not decompressor.eof:
                raise QuarantineError("corrupt gzip: the file is truncated")
            remaining = decompressor.unused_data.lstrip(b"\x00")
    except zlib.error as error:
        raise QuarantineError(f"corrupt gzip: {error}") from error
    return b"".join(parts)


def link_escape(path: Path, relative_path: str) -> str | None:
    """Why a path must not be read: a symbolic link leading out of the documents folder, or to something
    that is not a regular file (a device, a FIFO). None for an ordinary file inside the folder."""
    if not path.is_symlink():
        return None
    root = path.parents[len(Path(relative_path).parts) - 1].resolve()
    target = path.resolve()
    if not target.is_relative_to(root):
        return "a symbolic link to outside the documents folder is not followed — copy the file in instead"
    if target.exists() and not target.is_file():
        return "a symbolic link to something that is not a regular file is not followed"
    return None


def suffix_of(path: Path) -> str:
    name = path.name.lower()
    return ".jsonl.gz" if name.endswith(".jsonl.gz") else path.suffix.lower()


def tenant_of(relative_path: str, default_tenant: str) -> str:
    """The tenant a `tenant=<name>/` folder names, else the default; InvalidTenant for a name outside the pattern."""
    first = relative_path.split("/", 1)[0]
    if first.startswith(TENANT_DIR_PREFIX) and "/" in relative_path:
        name = first[len(TENANT_DIR_PREFIX) :]
        return validate_tenant(name, f"{first}/: tenant") if name else default_tenant
    return default_tenant


def _check_tenant_folder(unit: SourceUnit) -> None:
    """A file under a `tenant=<name>/` folder with an invalid name is quarantined, never indexed for anyone."""
    try:
        tenant_of(unit.relative_path, unit.tenant)
    except InvalidTenant as error:
        raise QuarantineError(f"{error} — rename the folder") from error


# --------------------------------------------------------------------------- discovery


def _iter_source_files(documents_dir: Path) -> Iterable[Path]:
    for path in sorted(documents_dir.rglob("*")):
        if any(part.startswith(".") for part in path.relative_to(documents_dir).parts):
            continue
        if suffix_of(path) in SUPPORTED_SUFFIXES and (path.is_file() or path.is_symlink()):
            yield path


def _read_jsonl_lines(path: Path, limits: ParseLimits) -> list[bytes]:
    raw = path.read_bytes()
    if suffix_of(path) == ".jsonl.gz":
        raw = gunzip(raw, limits)
    return [line for line in raw.splitlines() if line.strip()]


def _record_id(line: bytes) -> str:
    try:
        record = json.loads(line)
        return str(record["_id"]) if isinstance(record, dict) and "_id" in record else content_hash(line)
    except (ValueError, UnicodeDecodeError):
        return content_hash(line)


def jsonl_shard_count(record_count: int, shard_size: int) -> int:
    """Power-of-two shard counts: adding records rarely moves records between shards."""
    needed = max(1, math.ceil(record_count / shard_size))
    return 1 << (needed - 1).bit_length()


def shard_of(record_id: str, shard_count: int) -> int:
    return int(content_hash(record_id, 8), 16) % shard_count


# Scanning runs on every sensor tick; a file whose (mtime, size) is unchanged is not re-read.
_scan_cache: dict[tuple[str, int, int, int], list[tuple[int | None, int | None, str]]] = {}


def _fingerprints(
    path: Path, relative_path: str, shard_size: int, limits: ParseLimits
) -> list[tuple[int | None, int | None, str]]:
    """(shard, shard_count, content hash) for each partition the file makes."""
    if escape := link_escape(path, relative_path):  # never read what a link points at outside the folder
        return [(None, None, f"refused-{content_hash(escape, 8)}")]
    try:
        stat = path.stat()
    except OSError:
        return [(None, None, "unreadable")]
    if stat.st_size > limits.max_file_mb * 1e6:  # parsing quarantines it; do not read it on every scan
        return [(None, None, f"oversized-{stat.st_size}-{stat.st_mtime_ns}")]
    cache_key = (str(path), stat.st_mtime_ns, stat.st_size, shard_size)
    if cache_key in _scan_cache:
        return _scan_cache[cache_key]
    try:
        if suffix_of(path) in (".jsonl", ".jsonl.gz"):
            lines = _read_jsonl_lines(path, limits)
            count = jsonl_shard_count(len(lines), shard_size)
            if count == 1:
                result = [(None, None, content_hash(b"\n".join(lines)))]
            else:
                buckets: list[list[bytes]] = [[] for _ in range(count)]
                for line in lines:
                    buckets[shard_of(_record_id(line), count)].append(line)
                result = [(i, count, content_hash(b"\n".join(b))) for i, b in enumerate(buckets)]
        else:
            result = [(None, None, content_hash(path.read_bytes()))]
    except (OSError, QuarantineError) as error:
        result = [(None, None, f"unreadable-{content_hash(str(error), 8)}")]
    _scan_cache[cache_key] = result
    return result


def discover_sources(
    documents_dir: Path, default_tenant: str, shard_size: int, limits: ParseLimits | None = None
) -> list[SourceUnit]:
    """Every partition the folder defines right now, with the hash of its content."""
    limits = limits or ParseLimits()
    if not documents_dir.is_dir():
        raise FileNotFoundError(f"documents folder {documents_dir} does not exist — create it or set RAG_DOCUMENTS_DIR")
    units = []
    for path in _iter_source_files(documents_dir):
        relative = path.relative_to(documents_dir).as_posix()
        file_key = source_key(relative)
        try:
            tenant = tenant_of(relative, default_tenant)
        except InvalidTenant:
            tenant = ""  # parse_source quarantines the file, naming the fix
        for shard, count, digest in _fingerprints(path, relative, shard_size, limits):
            key = file_key if shard is None else shard_key(file_key, shard, count)
            units.append(SourceUnit(key, path, relative, tenant, digest, shard, count))
    return units


# --------------------------------------------------------------------------- normalisation

_CONTROL = re.compile(r"[\x00-\x08\x0b\x0c\x0e-\x1f\x7f]")
_SPACES = re.compile(r"[ \t\u00a0]+")
_BLANK_LINES = re.compile(r"\n\s*\n+")


def normalise_text(text: str) -> str:
    text = unicodedata.normalize("NFC", text).replace("\r\n", "\n").replace("\r", "\n")
    text = _CONTROL.sub("", text)
    lines = [_SPACES.sub(" ", line).strip() for line in text.split("\n")]
    return _BLANK_LINES.sub("\n\n", "\n".join(lines)).strip()


def decode_text(raw: bytes) -> str:
    if b"\x00" in raw[:8192] and not raw.startswith((b"\xff\xfe", b"\xfe\xff")):
        raise QuarantineError("binary content (NUL bytes) in a text file — is the extension wrong?")
    if raw.startswith((b"\xff\xfe", b"\xfe\xff")):
        return raw.decode("utf-16")
    try:
        return raw.decode("utf-8-sig")
    except UnicodeDecodeError as error:
        raise QuarantineError(
            f"not valid UTF-8 (byte {error.start}: {raw[error.start : error.start + 1]!r}) — re-save the file as UTF-8"
        ) from error


# --------------------------------------------------------------------------- parsers
# Each returns (title, text) for one file; raising QuarantineError (or any library error) quarantines it.


def _parse_txt(raw: bytes, path: Path, limits: ParseLimits) -> tuple[str, str]:
    text = decode_text(raw)
    first_line = next((line.strip() for line in text.splitlines() if line.strip()), "")
    return first_line[:200] or path.stem, text


def _parse_markdown(raw: bytes, path: Path, limits: ParseLimits) -> tuple[str, str]:
    from markdown_it import MarkdownIt

    source = decode_text(raw)
    tokens = MarkdownIt("commonmark").parse(source)
    title, blocks = "", []
    for index, token in enumerate(tokens):
        if token.type == "inline":
            blocks.append(token.content)
            if not title and index > 0 and tokens[index - 1].type == "heading_open":
                title = token.content
        elif token.type in ("fence", "code_block"):
            blocks.append(token.content)
    return title or path.stem, "\n\n".join(blocks)


def _html_to_text(html: str) -> tuple[str, str]:
    from bs4 import BeautifulSoup

    soup = BeautifulSoup(html, "lxml")
    for tag in soup(["script", "style", "noscript", "nav", "header", "footer", "template"]):
        tag.decompose()
    heading = soup.find(["h1", "h2"])
    title = (soup.title.get_text(strip=True) if soup.title else "") or (heading.get_text(strip=True) if heading else "")
    if soup.title:
        soup.title.decompose()
    return title, soup.get_text("\n")


def _parse_html(raw: bytes, path: Path, limits: ParseLimits) -> tuple[str, str]:
    title, text = _html_to_text(decode_text(raw))
    return title or path.stem, text


def _parse_pdf(raw: bytes, path: Path, limits: ParseLimits) -> tuple[str, str]:
    from pypdf import PdfReader
    from pypdf.errors import PdfReadError

    if not raw.startswith(b"%PDF"):
        raise QuarantineError("not a PDF (missing %PDF header) — the file is corrupt or mislabelled")
    try:
        reader = PdfReader(io.BytesIO(raw))
        if reader.is_encrypted:
            raise QuarantineError("encrypted PDF — remove the password and drop it in again")
        pages, characters = [], 0
        for page in reader.pages:  # stop at the limit: compressed page streams can expand enormously
            pages.append(page.extract_text() or "")
            characters += len(pages[-1])
            if characters > limits.max_document_chars:
                limits.check_characters("".join(pages))
    except PdfReadError as error:
        raise QuarantineError(f"corrupt PDF: {error}") from error
    metadata_title = (reader.metadata.title if reader.metadata else None) or ""
    text = "\n\n".join(pages)
    if not text.strip():
        raise QuarantineError("PDF has no extractable text (a scan?) — run OCR on it first")
    first_line = next((line.strip() for line in text.splitlines() if line.strip()), "")
    return metadata_title.strip() or first_line[:200] or path.stem, text


def _check_zip_expansion(raw: bytes, limits: ParseLimits) -> None:
    """A .docx is a zip: its members' declared sizes tell the expansion before anything is inflated."""
    with zipfile.ZipFile(io.BytesIO(raw)) as archive:
        if sum(member.file_size for member in archive.infolist()) > limits.expanded_allowance(len(raw)):
            raise limits.expansion_error(len(raw), "the .docx")


def _parse_docx(raw: bytes, path: Path, limits: ParseLimits) -> tuple[str, str]:
    from docx import Document as DocxDocument

    try:
        _check_zip_expansion(raw, limits)
        document = DocxDocument(io.BytesIO(raw))
    except (zipfile.BadZipFile, KeyError, ValueError) as error:
        raise QuarantineError(f"corrupt .docx ({type(error).__name__}: {error})") from error
    paragraphs = [p.text for p in document.paragraphs]
    for table in document.tables:
        for row in table.rows:
            paragraphs.append(" | ".join(cell.text for cell in row.cells))
    heading = next(
        (
            p.text
            for p in document.paragraphs
            if p.style is not None and p.style.name.startswith(("Title", "Heading")) and p.text.strip()
        ),
        "",
    )
    title = (document.core_properties.title or "").strip() or heading
    return title or path.stem, "\n\n".join(paragraphs)


FILE_PARSERS: dict[str, tuple[str, Callable[[bytes, Path, ParseLimits], tuple[str, str]]]] = {
    ".txt": ("text", _parse_txt),
    ".md": ("markdown-it", _parse_markdown),
    ".markdown": ("markdown-it", _parse_markdown),
    ".html": ("beautifulsoup", _parse_html),
    ".htm": ("beautifulsoup", _parse_html),
    ".pdf": ("pypdf", _parse_pdf),
    ".docx": ("python-docx", _parse_docx),
}


def _read_bytes(unit: SourceUnit, max_bytes: int) -> bytes:
    if escape := link_escape(unit.path, unit.relative_path):
        raise QuarantineError(escape)
    try:
        size = unit.path.stat().st_size
        if size > max_bytes:
            raise QuarantineError(
                f"{size / 1e6:.1f} MB is over the limit of {max_bytes / 1e6:.0f} MB — "
                "split the file or raise RAG_MAX_FILE_MB"
            )
        raw = unit.path.read_bytes()
    except OSError as error:
        raise QuarantineError(f"cannot read the file ({error.strerror or error})") from error
    if not raw.strip():
        raise QuarantineError("empty file")
    return raw


def _document(
    unit: SourceUnit, doc_id: str, title: str, text: str, parser: str, mtime: float, limits: ParseLimits
) -> Document:
    limits.check_characters(text)
    text = normalise_text(text)
    if not text:
        raise QuarantineError("no text after parsing")
    return Document(
        doc_id=doc_id,
        partition_key=unit.partition_key,
        tenant=unit.tenant,
        source=unit.relative_path,
        title=normalise_text(title)[:500],
        text=text,
        parser=parser,
        modified_at=mtime,
        content_hash=content_hash(text),
    )


def _parse_jsonl(unit: SourceUnit, raw: bytes, mtime: float, limits: ParseLimits) -> ParsedSource:
    if suffix_of(unit.path) == ".jsonl.gz":
        raw = gunzip(raw, limits)
    documents, quarantined, seen = [], [], set()
    for number, line in enumerate(raw.splitlines(), start=1):
        if not line.strip():
            continue
        if unit.shard_count and shard_of(_record_id(line), unit.shard_count) != unit.shard:
            continue
        where = f"line {number}"
        try:
            record = json.loads(decode_text(line))
            if not isinstance(record, dict):
                raise QuarantineError("a record must be a JSON object")
            doc_id = str(record.get("_id") or record.get("id") or "").strip()
            if not doc_id:
                raise QuarantineError("record has no `_id`")
            if utf8_length(doc_id) > DOC_ID_MAX_BYTES:
                raise QuarantineError(
                    f"`_id` is {utf8_length(doc_id)} bytes; the limit is {DOC_ID_MAX_BYTES} (UTF-8) — shorten it"
                )
            if doc_id in seen:
                raise QuarantineError(f"duplicate `_id` {doc_id!r} in this file")
            seen.add(doc_id)
            body = record.get("text") or record.get("contents") or ""
            if not isinstance(body, str):
                raise QuarantineError("`text` must be a string")
            title = record.get("title") or ""
            documents.append(_document(unit, doc_id, str(title), body, "jsonl", mtime, limits))
        except QuarantineError as error:
            quarantined.append(Quarantined(unit.relative_path, str(error), where))
        except ValueError as error:
            quarantined.append(Quarantined(unit.relative_path, f"invalid JSON: {error}", where))
    if not documents and not quarantined:
        quarantined.append(Quarantined(unit.relative_path, "no records"))
    return ParsedSource(unit, documents, quarantined)


def _check_location(unit: SourceUnit) -> None:
    """The source path and tenant are stored in VARCHAR fields; an over-long one would fail the whole write."""
    if utf8_length(unit.relative_path) > SOURCE_MAX_BYTES:
        raise QuarantineError(
            f"the path is {utf8_length(unit.relative_path)} bytes; the limit is {SOURCE_MAX_BYTES} — shorten it"
        )
    if utf8_length(unit.tenant) > TENANT_MAX_BYTES:
        raise QuarantineError(f"the tenant name is over {TENANT_MAX_BYTES} bytes — rename its folder")


def parse_source(unit: SourceUnit, limits: ParseLimits | None = None) -> ParsedSource:
    """Parse one partition. Never raises for bad content: failures come back as `quarantined`."""
    limits = limits or ParseLimits()
    try:
        _check_tenant_folder(unit)
        _check_location(unit)
        raw = _read_bytes(unit, int(limits.max_file_mb * 1e6))
        mtime = unit.path.stat().st_mtime
        suffix = suffix_of(unit.path)
        if suffix in (".jsonl", ".jsonl.gz"):
            return _parse_jsonl(unit, raw, mtime, limits)
        parser_name, parser = FILE_PARSERS[suffix]
        title, text = parser(raw, unit.path, limits)
        document = _document(unit, unit.partition_key, title, text, parser_name, mtime, limits)
        return ParsedSource(unit, [document], [])
    except QuarantineError as error:
        reason = str(error)
    except Exception as error:  # a parser library choking on a corrupt file must not fail the run
        reason = f"could not parse ({type(error).__name__}: {error})"
    return ParsedSource(unit, [], [Quarantined(unit.relative_path, reason)])
