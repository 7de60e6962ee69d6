# loopml serve as a container. No Docker engine runs on loopml's CI machines: the tests validate
# this file's structure and the Kubernetes manifests offline; build it where Docker runs:
#   docker build -t loopml:0.1.0 .
#   docker run -p 8080:8080 -e LOOPML_SERVE_TOKEN=<token> -v $PWD/my-project:/project loopml:0.1.0 churn@production
# The container binds 0.0.0.0, so a token is required (or --insecure); the mounted project folder
# must be writable by uid 10001 (its .loopml/ home), e.g. `chown -R 10001 my-project/.loopml`.
FROM python:3.11-slim AS build
WORKDIR /src
COPY pyproject.toml README.md ./
COPY src ./src
COPY plugins ./plugins
COPY flows ./flows
RUN python -m venv /opt/loopml \
 && /opt/loopml/bin/pip install --no-cache-dir "torch==2.13.0" \
 && /opt/loopml/bin/pip install --no-cache-dir ".[loop,s3]"

FROM python:3.11-slim
COPY --from=build /opt/loopml /opt/loopml
RUN useradd --uid 10001 --create-home loopml
USER 10001
WORKDIR /project
ENV PATH=/opt/loopml/bin:$PATH PYTHONUNBUFFERED=1
EXPOSE 8080
HEALTHCHECK --interval=10s --timeout=3s CMD python -c "import urllib.request,sys; urllib.request.urlopen('http://127.0.0.1:8080/v2/health/live', timeout=2)" || exit 1
ENTRYPOINT ["loopml", "serve", "--host", "0.0.0.0"]
CMD ["churn@production"]
