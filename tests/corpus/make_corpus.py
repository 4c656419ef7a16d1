"""Writes a corpus of ordinary files, each made by a real encoder and named with the
extension it really has, into the directory given as the first argument; prints one file
name per line. Pictures by Pillow, office documents by python-docx, openpyxl, python-pptx
and fpdf2, archives by the standard library, audio and video by ffmpeg, text by hand.
scripts/test installs the Python libraries into a venv of their own."""

import bz2
import gzip
import io
import json
import lzma
import os
import subprocess
import sys
import tarfile
import wave
import zipfile

out = sys.argv[1]
os.makedirs(out, exist_ok=True)
made = []


def write(name, data):
    with open(os.path.join(out, name), "wb") as f:
        f.write(data)
    made.append(name)


# Pictures.
from PIL import Image, ImageDraw

picture = Image.new("RGB", (96, 64), "white")
draw = ImageDraw.Draw(picture)
draw.rectangle((10, 10, 60, 40), fill=(200, 30, 30))
draw.ellipse((40, 20, 90, 60), fill=(30, 30, 200))
draw.text((5, 45), "hello", fill=(0, 0, 0))
for name, fmt, extra in [
    ("photo.jpg", "JPEG", {"quality": 85}),
    ("photo.jpeg", "JPEG", {"quality": 60, "progressive": True}),
    ("photo-exif.jpg", "JPEG", {"exif": Image.Exif().tobytes()}),
    ("drawing.png", "PNG", {}),
    ("drawing.gif", "GIF", {}),
    ("drawing.bmp", "BMP", {}),
    ("drawing.tiff", "TIFF", {}),
    ("drawing.tif", "TIFF", {"compression": "tiff_lzw"}),
    ("sticker.webp", "WEBP", {"quality": 80}),
    ("favicon.ico", "ICO", {}),
    ("scan.pdf", "PDF", {}),
]:
    buf = io.BytesIO()
    picture.save(buf, fmt, **extra)
    write(name, buf.getvalue())
buf = io.BytesIO()
picture.convert("L").save(buf, "BMP")
write("grey.bmp", buf.getvalue())

# Office documents.
import docx
import openpyxl
import pptx
from fpdf import FPDF

document = docx.Document()
document.add_heading("Quarterly report", 1)
document.add_paragraph("BMW is a car brand. MZ, ID3 and GIF89a are only words here.")
buf = io.BytesIO()
document.save(buf)
write("report.docx", buf.getvalue())

book = openpyxl.Workbook()
sheet = book.active
sheet.append(["BMI", "age"])
sheet.append([22.5, 31])
buf = io.BytesIO()
book.save(buf)
write("figures.xlsx", buf.getvalue())

deck = pptx.Presentation()
slide = deck.slides.add_slide(deck.slide_layouts[1])
slide.shapes.title.text = "Roadmap"
buf = io.BytesIO()
deck.save(buf)
write("roadmap.pptx", buf.getvalue())

pdf = FPDF()
pdf.add_page()
pdf.set_font("helvetica", size=12)
pdf.cell(text="An invoice, nothing more.")
write("invoice.pdf", bytes(pdf.output()))

# Archives.
buf = io.BytesIO()
with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED) as z:
    z.writestr("notes.txt", "hello media " * 100)
write("bundle.zip", buf.getvalue())
buf = io.BytesIO()
with tarfile.open(fileobj=buf, mode="w") as t:
    info = tarfile.TarInfo("notes.txt")
    data = b"hello media\n" * 50
    info.size = len(data)
    t.addfile(info, io.BytesIO(data))
tar = buf.getvalue()
write("bundle.tar", tar)
write("bundle.tar.gz".replace(".tar.gz", ".tgz"), gzip.compress(tar))
write("notes.gz", gzip.compress(b"plain notes\n" * 40))
write("notes.bz2", bz2.compress(b"plain notes\n" * 40))
write("notes.xz", lzma.compress(b"plain notes\n" * 40))

# Audio and video, as recorders and ffmpeg write them (moov after mdat by default).
def ffmpeg(name, *args):
    path = os.path.join(out, name)
    subprocess.run(
        ["ffmpeg", "-hide_banner", "-loglevel", "error", "-y", *args, path],
        check=True,
    )
    made.append(name)


tone = ["-f", "lavfi", "-i", "sine=frequency=440:duration=1:sample_rate=48000"]
voice = ["-f", "lavfi", "-i", "sine=frequency=300:duration=1:sample_rate=16000"]
clip = ["-f", "lavfi", "-i", "testsrc=size=128x96:rate=10:duration=1"]
ffmpeg("song.mp3", *tone, "-c:a", "libmp3lame", "-b:a", "128k")
ffmpeg("song-no-tag.mp3", *tone, "-c:a", "libmp3lame", "-write_xing", "0", "-id3v2_version", "0")
ffmpeg("voice-memo.m4a", *voice, "-c:a", "aac", "-b:a", "32k")
ffmpeg("voice.aac", *tone, "-c:a", "aac", "-f", "adts")
ffmpeg("voice-note.ogg", *voice, "-c:a", "libopus", "-b:a", "16k")
ffmpeg("voice-note.opus", *voice, "-c:a", "libopus", "-application", "voip")
ffmpeg("recording.wav", *tone, "-c:a", "pcm_s16le")
ffmpeg("recording.flac", *tone, "-c:a", "flac")
ffmpeg("clip.mp4", *clip, *tone, "-c:v", "libx264", "-pix_fmt", "yuv420p", "-c:a", "aac", "-shortest")
ffmpeg("clip.3gp", *clip, *voice, "-c:v", "libx264", "-pix_fmt", "yuv420p", "-c:a", "aac", "-shortest")
ffmpeg("clip.mov", *clip, "-c:v", "libx264", "-pix_fmt", "yuv420p")
ffmpeg("clip.webm", *clip, *tone, "-c:v", "libvpx", "-c:a", "libopus", "-shortest")
ffmpeg("clip.mkv", *clip, "-c:v", "libx264", "-pix_fmt", "yuv420p")
ffmpeg("clip.avi", *clip, "-c:v", "mpeg4")
ffmpeg("animation.gif", *clip)
encoders = subprocess.run(["ffmpeg", "-hide_banner", "-encoders"], capture_output=True, text=True).stdout
if "libopencore_amrnb" in encoders:
    ffmpeg("voice.amr", "-f", "lavfi", "-i", "sine=frequency=300:duration=1:sample_rate=8000",
           "-c:a", "libopencore_amrnb", "-ar", "8000", "-ac", "1")

# Text that begins like a binary format, as people write it every day.
for name, text in [
    ("cars.txt", "BMW is a car brand.\nSo is Audi.\n"),
    ("health.csv", "BMI,age,height\n22.5,31,180\n"),
    ("dos.txt", "MZ is how DOS programs begin, said the teacher.\n"),
    ("tags.txt", "ID3 tags hold the title of a song.\n"),
    ("formats.txt", "GIF89a was published in 1989.\n"),
    ("prose.txt", "%PDF is the first line of every PDF file, as this note explains.\n"),
    ("page.txt", "<!DOCTYPE html>\n<html><head><title>saved</title></head><body>A page saved as text.</body></html>\n"),
    ("script.txt", "#!/bin/sh\necho hello\n"),
    ("config.json", json.dumps({"BM": 1, "name": "Grüße"}) + "\n"),
    ("contact.vcf", "BEGIN:VCARD\nVERSION:3.0\nFN:Ann Example\nEND:VCARD\n"),
    ("readme.md", "# MZ\nBZh is how bzip2 begins.\n"),
    ("letter.rtf", "{\\rtf1\\ansi A letter.}\n"),
    ("notes.txt", "Öffnungszeiten: 9–17 Uhr — café, ß, 東京\n" * 300),
]:
    write(name, text.encode())
write("windows.txt", "\ufeffBMW notes in UTF-16, as Notepad saves them\r\n".encode("utf-16-le"))

# Bytes of unknown kinds, named as such: anything is allowed there.
import random

rand = random.Random(16).randbytes
write("backup.enc", b"BM" + rand(4000))
write("data.dat", b"MZ" + rand(3000))
write("blob.bin", b"ID3" + rand(2000))
write("key.enc", b"\xff\xfb" + rand(1500))
write("capture.dat", b"\x89PNG\r\n\x1a\n" + rand(1000))

print("\n".join(made))
