# The `app` image of examples/vessel.yaml, built on Containerfile.base:
#   buildah build -f examples/Containerfile.app -t vessel-example-app examples/www
FROM vessel-example-base
COPY index.html /www/index.html
RUN chmod 0644 /www/index.html
ENV HTTPD_PORT=8080
LABEL org.opencontainers.image.title=vessel-example-app
WORKDIR /www
CMD ["/bin/httpd", "-f", "-p", "127.0.0.1:8080", "-h", "/www"]
