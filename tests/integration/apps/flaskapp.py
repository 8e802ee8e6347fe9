"""A real Flask app: forms, uploads, JSON, redirects, cookies and a streamed response."""

import hashlib

from flask import Flask, Response, jsonify, redirect, request, stream_with_context, url_for

app = Flask(__name__)


@app.get("/")
def index():
    return "flask index"


@app.post("/form")
def form():
    return jsonify(fields=request.form.to_dict(flat=False), args=request.args.to_dict())


@app.post("/upload")
def upload():
    f = request.files["file"]
    data = f.read()
    return jsonify(filename=f.filename, size=len(data), sha256=hashlib.sha256(data).hexdigest(),
                   mimetype=f.mimetype, note=request.form.get("note"))


@app.post("/json")
def echo_json():
    payload = request.get_json()
    return jsonify(received=payload, doubled=[x * 2 for x in payload.get("numbers", [])]), 201


@app.get("/redirect")
def go():
    return redirect(url_for("target", via="redirect"))


@app.get("/target")
def target():
    return f"target via {request.args.get('via')}"


@app.get("/set-cookie")
def set_cookie():
    resp = Response("cookie set")
    resp.set_cookie("flavour", "oatmeal")
    resp.set_cookie("count", "1")
    return resp


@app.get("/read-cookie")
def read_cookie():
    return jsonify(dict(request.cookies))


@app.get("/stream")
def stream():
    name = request.args.get("name", "anon")

    def gen():
        for i in range(5):
            # request is usable inside the generator thanks to stream_with_context
            yield f"{i}:{request.args.get('name', name)}\n"

    return Response(stream_with_context(gen()), mimetype="text/plain")


@app.get("/error")
def error():
    raise RuntimeError("flask view failed")
