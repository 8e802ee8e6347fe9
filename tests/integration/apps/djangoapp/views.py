import hashlib
import os

from django.http import (FileResponse, HttpResponse, HttpResponseRedirect, JsonResponse,
                         StreamingHttpResponse)
from django.views.decorators.csrf import csrf_exempt


def index(request):
    return HttpResponse("django index")


@csrf_exempt
def form(request):
    return JsonResponse({"fields": {k: request.POST.getlist(k) for k in request.POST},
                         "method": request.method, "path": request.path})


@csrf_exempt
def upload(request):
    f = request.FILES["file"]
    data = f.read()
    return JsonResponse({"filename": f.name, "size": len(data), "sha256": hashlib.sha256(data).hexdigest(),
                         "note": request.POST.get("note")})


def go(request):
    return HttpResponseRedirect("/target?via=redirect")


def target(request):
    return HttpResponse(f"target via {request.GET.get('via')}")


def set_cookie(request):
    resp = HttpResponse("cookie set")
    resp.set_cookie("flavour", "ginger")
    return resp


def read_cookie(request):
    return JsonResponse(dict(request.COOKIES))


def stream(request):
    def gen():
        for i in range(5):
            yield f"line {i}\n".encode()

    return StreamingHttpResponse(gen(), content_type="text/plain")


def file(request):
    # FileResponse hands the open file to wsgi.file_wrapper.
    return FileResponse(open(os.environ["DJANGO_TEST_FILE"], "rb"), content_type="application/octet-stream")
